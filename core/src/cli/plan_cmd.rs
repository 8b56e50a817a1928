//! `weir plan`: print an address plan.

use clap::Args;

use super::CliError;
use crate::plan::{Plan, PlanReport};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The plan, e.g. 10.128.0.0/12/6/14, or a flat one such as 203.0.113.128/26.
    #[arg(value_name = "SPEC")]
    pub spec: String,
    /// Runner ids to show (repeatable; default: runner 1).
    #[arg(long = "runner", value_name = "N")]
    pub runners: Vec<String>,
    /// VNI of runner r is B + r.
    #[arg(long, value_name = "B", default_value_t = 100)]
    pub vxlan_id_base: u32,
    /// Host tunnel name prefix.
    #[arg(long, value_name = "PREFIX", default_value = "vxkr")]
    pub tunnel_prefix: String,
}

pub fn run(args: PlanArgs, json: bool) -> Result<(), CliError> {
    let usage = |e: &dyn std::fmt::Display| CliError::Usage(e.to_string());
    let plan: Plan = args.spec.parse().map_err(|e| usage(&e))?;
    let ids = if args.runners.is_empty() {
        vec![1]
    } else {
        args.runners
            .iter()
            .map(|r| {
                r.trim().parse::<u64>().map_err(|_| {
                    CliError::Usage(format!(
                        "runner id {r:?} is not an integer (allowed: 1..={})",
                        plan.max_runners()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let report = PlanReport::new(&plan, &ids, args.vxlan_id_base, &args.tunnel_prefix)
        .map_err(|e| usage(&e))?;
    if json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| CliError::Failed(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn render(r: &PlanReport) -> String {
    let mut out = format!(
        "plan          {}\noverlay       {}\nhost ip       {}\nmax runners   {}\nrunner subnet /{} ({} assignable addresses {})\n\n",
        r.spec,
        r.overlay_cidr,
        r.host_ip,
        r.max_runners,
        r.runner_prefix,
        r.assignable_per_runner,
        // A flat plan's one subnet is every runner's: its addresses are shared.
        if r.flat {
            "shared by every runner: a flat plan"
        } else {
            "each"
        }
    );
    let header = [
        "RUNNER",
        "SUBNET",
        "GATEWAY",
        "HOST SIDE",
        "FIRST",
        "LAST",
        "DEVICE",
        "VNI",
    ];
    let rows: Vec<[String; 8]> = r
        .runners
        .iter()
        .map(|x| {
            [
                x.id.to_string(),
                x.subnet.clone(),
                x.gateway.clone(),
                x.host_ip_on_subnet.clone(),
                x.first.clone(),
                x.last.clone(),
                x.device.clone(),
                x.vni.to_string(),
            ]
        })
        .collect();
    out.push_str(&super::table(&header, &rows));
    out
}
