//! `weir lab`: a whole cluster in network namespaces on this machine.

use clap::{Args, Subcommand};

use super::CliError;
use crate::lab::{self, Lab, LabSpec};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab and leave it running (tear it down with `weir lab down`).
    Up(LabArgs),
    /// Remove every namespace, link and process of a lab, even after a crash.
    Down {
        /// The lab's name.
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Build the lab, print the status and a connectivity matrix, and tear it down.
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
    /// Address plan of the overlay.
    #[arg(long, default_value = "10.128.0.0/12/6/14")]
    pub plan: String,
    /// Isolated mode: no overlay, a NATed bridge per runner.
    #[arg(long)]
    pub isolated: bool,
}

pub fn run(cmd: LabCommand) -> Result<(), CliError> {
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
            let lab = build(&args, true)?;
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
                Lab::up(spec(&args, false)?)
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

fn spec(args: &LabArgs, detached: bool) -> Result<LabSpec, CliError> {
    let plan: crate::plan::Plan = args
        .plan
        .parse()
        .map_err(|e: crate::plan::PlanError| CliError::Usage(e.to_string()))?;
    if args.runners > plan.max_runners() {
        return Err(CliError::Usage(format!(
            "--runners {} exceeds the plan's {} runners",
            args.runners,
            plan.max_runners()
        )));
    }
    let bin = std::env::current_exe()
        .map_err(|e| CliError::Failed(format!("find the weir binary: {e}")))?;
    let mut spec = LabSpec::new(&args.name, bin);
    spec.runners = args.runners;
    spec.workloads_per_runner = args.workloads;
    spec.detached = detached;
    spec.overlay = format!("enabled = {}\nsubnet = \"{plan}\"\n", !args.isolated);
    Ok(spec)
}

fn build(args: &LabArgs, detached: bool) -> Result<Lab, CliError> {
    let spec = spec(args, detached)?;
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
