//! Memory: the resident set of an idle runner daemon, of an idle host, and of a host with 255
//! runners registered; KohakuRiver's published figures beside them.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::env::{self, Opts, mb, rss_bytes};
use crate::report::{Report, RunInfo};
use crate::table::Table;

pub const TITLE: &str = "Memory: resident set of the daemons";

/// Runners registered for the loaded host (one real runner daemon plus direct registrations).
const RUNNERS: usize = 255;
/// How long a daemon is left alone before its RSS is read.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(opts: Opts, run: &RunInfo) -> Result<Report> {
    env::settle().await;
    let mut spec = env::lab_spec("mem")?;
    spec.overlay = format!("subnet = \"{}\"\n", crate::scale::BIG_PLAN);
    let mut lab = env::lab_up(spec).await?;
    let host_pid = |lab: &weir::lab::Lab| lab.host.as_ref().map(|d| d.pid).context("no host");
    tokio::time::sleep(SETTLE).await;
    let host_idle = rss_bytes(host_pid(&lab)?)?;
    println!("memory: host idle {}", mb(host_idle));

    lab.add_runner(1).await.context("start runner 1")?;
    tokio::time::sleep(SETTLE).await;
    let runner_pid = lab.runners.get(&1).map(|d| d.pid).context("no runner 1")?;
    let runner_idle = rss_bytes(runner_pid)?;
    println!("memory: runner idle {}", mb(runner_idle));

    // 254 more runners, registered directly (their tunnels are real) — 255 in all.
    let mut agent = env::agent(&lab).await?;
    for i in 0..RUNNERS - 1 {
        agent
            .register(weir_proto::v1::RegisterRequest {
                name: format!("m{i:03}"),
                physical_ip: std::net::Ipv4Addr::from(
                    u32::from(std::net::Ipv4Addr::new(198, 18, 0, 1)) + i as u32,
                )
                .to_string(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("register m{i:03}"))?;
    }
    tokio::time::sleep(SETTLE).await;
    let host_loaded = rss_bytes(host_pid(&lab)?)?;
    println!("memory: host with {RUNNERS} runners {}", mb(host_loaded));

    let mut r = Report::new("memory", TITLE, opts, run);
    r.text(&format!(
        "`VmRSS` from `/proc/PID/status` of the real daemons in a lab (release build, log level info), read \
         {} s after each step settled: the host right after it is ready (no runner), one `weir runner` \
         daemon registered with its session open and no workload, then the same host with {RUNNERS} runners \
         registered (the real runner plus {} registered directly over gRPC, each with its `vxkr` tunnel). \
         KohakuRiver's figures are its Python host's, run in namespaces on a machine of this kind (from the \
         project's notes); they are **not measured by this suite**.",
        SETTLE.as_secs(),
        RUNNERS - 1
    ));
    let mut t = Table::new(&["daemon", "state", "RSS"]);
    t.row(["Weir host", "idle, no runner", &mb(host_idle)]);
    t.row([
        "Weir host".to_string(),
        format!("{RUNNERS} runners registered"),
        mb(host_loaded),
    ]);
    t.row([
        "Weir runner",
        "idle, registered, no workload",
        &mb(runner_idle),
    ]);
    t.row([
        "KohakuRiver host — reference (published, not measured here)",
        "idle",
        "85 MB",
    ]);
    t.row([
        "KohakuRiver host — reference (published, not measured here)",
        "60 runners",
        "101 MB",
    ]);
    r.table(&t);
    Ok(r)
}
