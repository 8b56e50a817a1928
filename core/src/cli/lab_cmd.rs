//! `weir lab`: a whole cluster in network namespaces on this machine.

use std::path::Path;

use clap::{Args, Subcommand};

use super::CliError;
use crate::lab::{self, Lab, LabSpec};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab and leave it running (tear it down with `weir lab down`).
    ///
    /// `--config FILE` (given on the command line; WEIR_CONFIG is not used by the lab) is merged
    /// over the daemons' generated configurations: the host takes every section of it but
    /// [runner], each runner its [runner] and [telemetry] sections. The keys the lab sets itself
    /// (listen addresses, sockets, state directories, tokens, TLS, the runners' names and the
    /// host's URL) are refused. The daemons also inherit this command's environment, so
    /// WEIR_<SECTION>__<KEY> variables (e.g. WEIR_TELEMETRY__OTLP_ENDPOINT) and the OTEL_*
    /// variables reach every one of them.
    Up(LabArgs),
    /// Remove every namespace, link and process of a lab, even after a crash.
    Down {
        /// The lab's name.
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Build the lab, print the status and a connectivity matrix, and tear it down.
    ///
    /// Takes `--config FILE` and the environment as `weir lab up` does.
    Demo(LabArgs),
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// The lab's name (namespaces are weir-NAME-…).
    #[arg(long, default_value = "lab")]
    pub name: String,
    /// How many runners.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub runners: u32,
    /// Workloads per runner.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub workloads: u32,
    /// Address plan of the overlay (default: the configuration's overlay.subnet, else
    /// 10.128.0.0/12/6/14).
    #[arg(long, value_name = "SPEC")]
    pub plan: Option<String>,
    /// Isolated mode: no overlay, a NATed bridge per runner.
    #[arg(long)]
    pub isolated: bool,
}

/// The plan of a lab given neither `--plan` nor a plan in its `--config`.
const DEFAULT_PLAN: &str = "10.128.0.0/12/6/14";

/// `config`: the `--config` FILE given on the command line, merged into the lab daemons'
/// configurations (`WEIR_CONFIG` is not used: it usually names this machine's own).
pub fn run(cmd: LabCommand, config: Option<&Path>) -> Result<(), CliError> {
    match cmd {
        LabCommand::Down { name } => {
            let removed = lab::down(&name);
            if removed.is_empty() {
                println!("lab {name}: nothing to remove");
            } else {
                println!("lab {name}: removed {}", removed.join(", "));
            }
            Ok(())
        }
        LabCommand::Up(args) => {
            let lab = build(&args, config, true)?;
            println!(
                "lab {name} is up with {} runners.\n  export WEIR_HOST={} WEIR_TOKEN=$(cat {})\n  weir status\n  ip netns exec weir-{name}-r1-w1 ping 10.128.128.2\ntear it down with: weir lab down --name {name}",
                args.runners,
                lab.control_url(),
                lab.dir.join("control.token").display(),
                name = args.name,
            );
            lab.keep();
            Ok(())
        }
        LabCommand::Demo(args) => {
            let rt = runtime()?;
            let lab = rt.block_on(async {
                Lab::up(spec(&args, config, false)?)
                    .await
                    .map_err(|e| CliError::Failed(e.to_string()))
            })?;
            let report = rt.block_on(lab.report());
            print!("{report}");
            drop(lab);
            println!("\nlab {} torn down", args.name);
            Ok(())
        }
    }
}

/// Read a lab's `--config`: a configuration file with no key the lab sets itself.
fn daemon_config(file: &Path) -> Result<toml::Table, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("--config {}: {e}", file.display())))?;
    let bad = |e: &dyn std::fmt::Display| {
        CliError::Usage(format!("invalid configuration:\n{}: {e}", file.display()))
    };
    // Unknown keys and bad values are refused here, before anything is built.
    toml::from_str::<crate::config::Config>(&text).map_err(|e| bad(&e))?;
    let table: toml::Table = text.parse().map_err(|e| bad(&e))?;
    let taken = lab::lab_keys_in(&table);
    if !taken.is_empty() {
        return Err(CliError::Usage(format!(
            "--config {}: {} {} set by the lab itself; remove {} from the file",
            file.display(),
            taken.join(", "),
            if taken.len() == 1 { "is" } else { "are" },
            if taken.len() == 1 { "it" } else { "them" },
        )));
    }
    Ok(table)
}

fn spec(args: &LabArgs, config: Option<&Path>, detached: bool) -> Result<LabSpec, CliError> {
    let daemon_config = config.map(daemon_config).transpose()?.unwrap_or_default();
    let overlay = daemon_config.get("overlay").and_then(toml::Value::as_table);
    let file_plan = overlay
        .and_then(|o| o.get("subnet"))
        .and_then(toml::Value::as_str);
    let file_enabled = overlay.is_some_and(|o| o.contains_key("enabled"));
    let file_networks = daemon_config.contains_key("networks");
    let given = |what: &str| {
        CliError::Usage(format!(
            "{what} and the --config file's {} both say which networks the lab has; keep one",
            if file_networks {
                "[[networks]]"
            } else if file_plan.is_some() {
                "overlay.subnet"
            } else {
                "overlay.enabled"
            }
        ))
    };
    let from_file = file_networks || file_plan.is_some() || file_enabled;
    if from_file && args.plan.is_some() {
        return Err(given("--plan"));
    }
    if from_file && args.isolated {
        return Err(given("--isolated"));
    }
    let mut overlay_lines = String::new();
    if !file_networks {
        let text = args.plan.as_deref().or(file_plan).unwrap_or(DEFAULT_PLAN);
        let plan: crate::plan::Plan = text
            .parse()
            .map_err(|e: crate::plan::PlanError| CliError::Usage(e.to_string()))?;
        if args.runners > plan.max_runners() {
            return Err(CliError::Usage(format!(
                "--runners {} exceeds the plan's {} runners",
                args.runners,
                plan.max_runners()
            )));
        }
        if !from_file {
            overlay_lines = format!("enabled = {}\nsubnet = \"{plan}\"\n", !args.isolated);
        }
    }
    let bin = std::env::current_exe()
        .map_err(|e| CliError::Failed(format!("find the weir binary: {e}")))?;
    let mut spec = LabSpec::new(&args.name, bin);
    spec.runners = args.runners;
    spec.workloads_per_runner = args.workloads;
    spec.detached = detached;
    spec.overlay = overlay_lines;
    spec.daemon_config = daemon_config;
    Ok(spec)
}

fn build(args: &LabArgs, config: Option<&Path>, detached: bool) -> Result<Lab, CliError> {
    let spec = spec(args, config, detached)?;
    runtime()?.block_on(async {
        Lab::up(spec)
            .await
            .map_err(|e| CliError::Failed(e.to_string()))
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("start the async runtime: {e}")))
}
