//! Commands that talk to a running host: `weir status`, `weir attach`, `weir detach`.

use std::path::Path;

use clap::Args;
use serde_json::json;
use tonic::transport::Channel;
use weir_proto::v1 as pb;
use weir_proto::v1::control_client::ControlClient;

use super::CliError;
use crate::api::client::{ChannelOptions, code_name, connect};

/// Where to find the host.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// URL of the host: http://HOST:PORT or unix:///PATH (default: the configured control socket).
    #[arg(long, env = "WEIR_HOST", value_name = "URL")]
    pub host: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// The runner the workload lives on.
    #[arg(long)]
    pub runner: String,
    /// The workload's id (letters, digits, '.', '_', '-', ':').
    #[arg(long = "id", value_name = "WORKLOAD")]
    pub id: String,
    /// The workload's network namespace on the runner (/run/netns/NAME or /proc/PID/ns/net).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "pid",
        required_unless_present = "pid"
    )]
    pub netns: Option<String>,
    /// A process in the workload's network namespace, instead of --netns.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The network to join (default: "default").
    #[arg(long)]
    pub network: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    #[command(flatten)]
    pub host: HostArgs,
    #[arg(long)]
    pub runner: String,
    #[arg(long = "id", value_name = "WORKLOAD")]
    pub id: String,
    #[arg(long)]
    pub network: Option<String>,
}

async fn client(
    args: &HostArgs,
    config: Option<&Path>,
) -> Result<ControlClient<Channel>, CliError> {
    let url = match &args.host {
        Some(u) => u.clone(),
        None => {
            let loaded = crate::config::load(config)?;
            let sock = loaded.config.host.control_socket.ok_or_else(|| {
                CliError::Usage("no --host given and host.control_socket is not set".into())
            })?;
            format!("unix://{}", sock.display())
        }
    };
    let channel = connect(&url, ChannelOptions::default())
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    Ok(ControlClient::new(channel))
}

fn refused(st: tonic::Status) -> CliError {
    CliError::Failed(format!("{}: {}", code_name(st.code()), st.message()))
}

fn rt() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("start the async runtime: {e}")))
}

pub fn status(args: StatusArgs, config: Option<&Path>) -> Result<(), CliError> {
    let s = rt()?.block_on(async {
        let mut c = client(&args.host, config).await?;
        c.get_status(pb::GetStatusRequest {}).await.map_err(refused)
    })?;
    let s = s.into_inner();
    if args.json {
        let runners: Vec<_> = s
            .runners
            .iter()
            .map(|r| {
                json!({"name": r.name, "id": r.id, "subnet": r.subnet, "gateway": r.gateway,
                       "physical_ip": r.physical_ip, "active": r.active, "connected": r.connected,
                       "placeholder": r.placeholder, "last_seen_unix_ms": r.last_seen_unix_ms,
                       "labels": r.labels})
            })
            .collect();
        let v = json!({"plan": s.plan, "host_ip": s.host_ip, "overlay_enabled": s.overlay_enabled,
                       "max_runners": s.max_runners, "active_runners": s.active_runners,
                       "workloads": s.workloads, "runners": runners});
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    print!("{}", render_status(&s));
    Ok(())
}

/// The status table, like KohakuRiver's `node overlay` panel.
pub fn render_status(s: &pb::GetStatusResponse) -> String {
    let mut out = if s.overlay_enabled {
        format!(
            "overlay   {}\nhost ip   {}\nrunners   {} active of {} registered (max {})\nworkloads {}\n\n",
            s.plan,
            s.host_ip,
            s.active_runners,
            s.runners.iter().filter(|r| !r.placeholder).count(),
            s.max_runners,
            s.workloads
        )
    } else {
        format!(
            "overlay   disabled (isolated mode)\nrunners   {} active of {}\nworkloads {}\n\n",
            s.active_runners,
            s.runners.len(),
            s.workloads
        )
    };
    let now = crate::store::now_ms();
    let rows: Vec<[String; 7]> = s
        .runners
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
            ]
        })
        .collect();
    out.push_str(&super::table(
        &[
            "RUNNER",
            "ID",
            "SUBNET",
            "GATEWAY",
            "PHYSICAL IP",
            "STATUS",
            "LAST SEEN",
        ],
        &rows,
    ));
    out
}

pub fn attach(args: AttachArgs, config: Option<&Path>) -> Result<(), CliError> {
    let r = rt()?.block_on(async {
        let mut c = client(&args.host, config).await?;
        c.attach_workload(pb::AttachWorkloadRequest {
            runner: args.runner.clone(),
            workload_id: args.id.clone(),
            netns: args.netns.clone().unwrap_or_default(),
            pid: args.pid.unwrap_or(0),
            network: args.network.clone().unwrap_or_default(),
        })
        .await
        .map_err(refused)
    })?;
    let r = r.into_inner();
    if args.json {
        let v = json!({"id": r.workload_id, "runner": r.runner, "network": r.network, "ip": r.ip,
                       "gateway": r.gateway, "mtu": r.mtu, "host_ip": r.host_ip, "ifname": r.ifname});
        println!("{}", serde_json::to_string(&v).unwrap_or_default());
    } else {
        println!(
            "attached {} on {} ({}): {} {} via {} mtu {}",
            r.workload_id, r.runner, r.network, r.ifname, r.ip, r.gateway, r.mtu
        );
    }
    Ok(())
}

pub fn detach(args: DetachArgs, config: Option<&Path>) -> Result<(), CliError> {
    rt()?.block_on(async {
        let mut c = client(&args.host, config).await?;
        c.detach_workload(pb::DetachWorkloadRequest {
            runner: args.runner.clone(),
            workload_id: args.id.clone(),
            network: args.network.clone().unwrap_or_default(),
        })
        .await
        .map_err(refused)
    })?;
    println!("detached {}", args.id);
    Ok(())
}
