//! `weir migrate`: take over a running overlay of another system in place.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use tonic::transport::Endpoint;
use weir_proto::v1 as pb;
use weir_proto::v1::local_client::LocalClient;

use super::CliError;

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// On a runner machine, once `weir runner` runs there: adopt the containers KohakuRiver
    /// left on the network's bridge as Weir workloads, in place (same address, MAC, interface
    /// and namespace; nothing re-created). See docs/migration-kohakuriver.md.
    Kohakuriver(KohakuriverArgs),
}

#[derive(Debug, Args)]
pub struct KohakuriverArgs {
    /// The runner's local socket (default: `runner.socket` of the configuration).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The Weir network whose bridge holds the containers (default: the primary one).
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
    /// Find and print what would be adopted; adopt nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(cmd: MigrateCommand, config: Option<&Path>, json: bool) -> Result<(), CliError> {
    match cmd {
        MigrateCommand::Kohakuriver(a) => kohakuriver(a, config, json),
    }
}

fn kohakuriver(a: KohakuriverArgs, config: Option<&Path>, json: bool) -> Result<(), CliError> {
    let socket = match a.socket {
        Some(s) => s,
        None => crate::config::load(config)?.config.runner.socket.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("start the runtime: {e}")))?;
    let out = rt.block_on(async {
        let ep = Endpoint::from_shared(format!("unix://{}", socket.display()))
            .map_err(|e| CliError::Usage(format!("--socket: {}: {e}", socket.display())))?;
        let channel = ep.connect().await.map_err(|e| {
            CliError::Failed(format!(
                "the Weir runner does not answer at {} (is `weir runner` running on this machine?): {e}",
                socket.display()
            ))
        })?;
        LocalClient::new(channel)
            .adopt(pb::LocalAdoptRequest {
                network: a.network.clone().unwrap_or_default(),
                dry_run: a.dry_run,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|st| CliError::Failed(format!("adopt: {}", st.message())))
    })?;
    if json {
        let item = |c: &pb::AdoptedContainer| {
            serde_json::json!({
                "workload_id": c.workload_id, "ip": c.ip, "netns": c.netns,
                "ifname": c.ifname, "port": c.port, "mac": c.mac,
            })
        };
        let port = |u: &pb::UnadoptedPort| serde_json::json!({"port": u.port, "reason": u.reason});
        println!(
            "{}",
            serde_json::json!({
                "network": out.network,
                "dry_run": a.dry_run,
                "adopted": out.adopted.iter().map(item).collect::<Vec<_>>(),
                "skipped": out.skipped.iter().map(port).collect::<Vec<_>>(),
                "failed": out.failed.iter().map(port).collect::<Vec<_>>(),
            })
        );
    } else {
        let verb = if a.dry_run { "would adopt" } else { "adopted" };
        println!(
            "network {}: {verb} {} container(s)",
            out.network,
            out.adopted.len()
        );
        let rows: Vec<[String; 5]> = out
            .adopted
            .iter()
            .map(|c| {
                [
                    c.workload_id.clone(),
                    c.ip.clone(),
                    c.netns.clone(),
                    c.ifname.clone(),
                    c.port.clone(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            print!(
                "{}",
                super::table(&["WORKLOAD", "IP", "NETNS", "IFNAME", "PORT"], &rows)
            );
        }
        for u in &out.skipped {
            println!("skipped {}: {}", u.port, u.reason);
        }
        for u in &out.failed {
            println!("failed {}: {}", u.port, u.reason);
        }
    }
    if out.failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} container(s) could not be adopted",
            out.failed.len()
        )))
    }
}
