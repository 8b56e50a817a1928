//! Scale: attach latency as workloads pile up on one runner with the `default-allocator`
//! address plugin and the `tenant-isolation` firewall loaded, and the firewall's rule count. (Registrations and host restarts at
//! thousands of runners are the `hub` section.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weir::lab::Lab;
use weir_proto::v1 as pb;

use crate::env::{self, Opts};
use crate::report::{Report, RunInfo};
use crate::stats::{Samples, dur_ratio, fmt_dur, mean};
use crate::table::Table;

pub const TITLE: &str = "Scale: attach with many workloads";

/// A plan with room for 1,023 runners.
pub const BIG_PLAN: &str = "10.0.0.0/8/10/14";

pub async fn run(opts: Opts, run: &RunInfo) -> Result<Report> {
    let checkpoints = if opts.quick {
        [10, 100, 1_000]
    } else {
        [10, 1_000, 10_000]
    };
    println!(
        "scale: {} attaches on one runner with default-allocator and tenant-isolation …",
        checkpoints[2]
    );
    let one = attach_scale(1, checkpoints)
        .await
        .context("attach on one runner")?;
    // One runner's bridge takes at most 1,023 ports: past that, spread the same number of
    // workloads over ten runners, so the host and its store still hold all of them.
    let spread = if one.stopped.is_some() {
        println!(
            "scale: one runner stopped at {}; {} attaches over 10 runners …",
            one.latencies.len(),
            checkpoints[2]
        );
        Some(
            attach_scale(10, checkpoints)
                .await
                .context("attach over ten runners")?,
        )
    } else {
        None
    };

    let mut r = Report::new("scale", TITLE, opts, run);
    r.text(&format!(
        "**Attach with many workloads.** A lab whose host loads `default-allocator` as its allocator (it \
         picks every workload's address with one query of the runner's pool) and `tenant-isolation` as \
         its firewall (enforce; labels `tenant=a` / `tenant=b` alternating), `Control.AttachWorkload` one after another, \
         each into its own namespace (all of them created before the first attach, as a container exists \
         before its network is attached), up to {} workloads; the mean (and median) latency of the attaches in \
         each window; *runner 1 kernel*: the mean time runner 1 spent creating a workload's interfaces in \
         that window (its own `weir_kernel_duration_seconds{{op=\"netlink.attach\"}}`, read from its \
         Prometheus endpoint before and after the window), and the number of rules in runner 1's table \
         `inet weir_fw` (rules only: chains, sets, maps and named counters excluded). The project's target: \
         the {}th attach costs at most 1.5× the {}th, and the rule count does not grow. The first window \
         also pays one-time costs (the first decision of the plugin, installing the firewall table), which \
         the median leaves aside.",
        checkpoints[2], checkpoints[2], checkpoints[0]
    ));
    let mut t = Table::new(&[
        "runners",
        "attaches",
        "mean",
        "mean / 1–10",
        "median",
        "median / 1–10",
        "runner 1 kernel",
        "weir_fw rules",
    ]);
    for s in std::iter::once(&one).chain(spread.as_ref()) {
        s.rows(&mut t, checkpoints);
    }
    r.table(&t);
    let medians: Vec<String> = std::iter::once(&one)
        .chain(spread.as_ref())
        .map(|s| format!("on {} runner(s), {}", s.runners, s.medians(checkpoints)))
        .collect();
    r.text(&format!(
        "The medians, window by window (they leave the first window's one-time costs aside): {}.",
        medians.join("; ")
    ));
    r.text(
        "Where growth remains, it is the kernel's, in the *runner 1 kernel* column: every link message \
         about a veth whose peer lives in another namespace (its creation, its carrier coming up, its \
         alias) makes the kernel find that namespace's id by walking every id the runner's namespace has \
         handed out (`__peernet2id_alloc` → `idr_for_each`, `net/core/net_namespace.c`) — one per workload \
         namespace, so the walk lengthens with each workload. Weir keeps these messages to a minimum (the \
         veth is created up, with its MTU and on its bridge in one request), keeps its bridges small (adding \
         a port costs more on a big bridge), and adds set elements, not rules, for the firewall (the kernel \
         re-validates every element of a jump verdict map per transaction, so membership is a plain set per \
         policy group).",
    );
    if let Some(stop) = &one.stopped {
        r.text(&format!(
            "**One runner stopped at {} workloads:** attach #{} failed: `{stop}`. A runner enslaves every \
             workload's veth to its one bridge, and a Linux bridge takes at most 1,024 ports \
             (`BR_MAX_PORTS`; `vxlan0` is one of them), so one runner cannot hold {} container workloads. \
             The second measurement spreads the same number of workloads round-robin over 10 runners \
             (1,000 each at the end): the host holds them all, each runner's bridge stays below its limit.",
            one.latencies.len(),
            one.latencies.len() + 1,
            checkpoints[2]
        ));
    }
    Ok(r)
}

/// Attach latencies as workloads accumulate.
struct AttachScale {
    runners: u32,
    latencies: Vec<Duration>,
    /// Rule count of `inet weir_fw` on runner 1 after each checkpoint reached.
    rules: HashMap<usize, usize>,
    /// Why it stopped before the last checkpoint.
    stopped: Option<String>,
    /// Runner 1's mean kernel time per workload interface (`netlink.attach`) in each window.
    kernel: HashMap<usize, Duration>,
}

impl AttachScale {
    /// Mean and median of attaches `end - 9 ..= end` (1-based), if that many were made.
    fn window(&self, end: usize) -> Option<(Duration, Duration)> {
        let w = self.latencies.get(end - 10..end)?;
        Some((mean(w), Samples::new(w.to_vec()).median()))
    }

    /// The medians of each window reached, as `a (1–10) → b (991–1000) → …`.
    fn medians(&self, checkpoints: [usize; 3]) -> String {
        let mut ends: Vec<usize> = checkpoints.to_vec();
        ends.push(self.latencies.len());
        ends.sort_unstable();
        ends.dedup();
        ends.into_iter()
            .filter_map(|end| {
                let (_, md) = self.window(end)?;
                Some(format!("{} ({}–{})", fmt_dur(md), end - 9, end))
            })
            .collect::<Vec<_>>()
            .join(" → ")
    }

    fn rows(&self, t: &mut Table, checkpoints: [usize; 3]) {
        let first = self.window(checkpoints[0]);
        let cell = |end: usize| match (self.window(end), first) {
            (Some((m, md)), Some((fm, fmd))) => [
                fmt_dur(m),
                dur_ratio(m, fm),
                fmt_dur(md),
                dur_ratio(md, fmd),
            ],
            _ => [
                "not reached".to_string(),
                "–".into(),
                "–".into(),
                "–".into(),
            ],
        };
        let mut ends: Vec<usize> = checkpoints.to_vec();
        let kernel = |end: usize| {
            self.kernel
                .get(&end)
                .map_or("–".to_string(), |d| fmt_dur(*d))
        };
        let done = self.latencies.len();
        if self.stopped.is_some() && done >= 10 && !ends.contains(&done) {
            ends.push(done);
            ends.sort_unstable();
        }
        for end in ends {
            let [m, ratio, md, md_ratio] = cell(end);
            let label = if self.stopped.is_some() && end == done {
                format!("{}–{} (the last before the failure)", end - 9, end)
            } else {
                format!("{}–{}", end - 9, end)
            };
            t.row([
                self.runners.to_string(),
                label,
                m,
                ratio,
                md,
                md_ratio,
                kernel(end),
                self.rules
                    .get(&end)
                    .map_or(String::new(), |n| n.to_string()),
            ]);
        }
    }
}

/// Attach up to `checkpoints[2]` workloads round-robin over `runners` runners with the
/// tenant-isolation firewall; stop at the first failure.
async fn attach_scale(runners: u32, checkpoints: [usize; 3]) -> Result<AttachScale> {
    let mut spec = env::lab_spec(&format!("sa{runners}"))?;
    spec.runners = runners;
    let path = env::plugin("tenant_isolation")?;
    // An address-picking allocator too: every attach asks it for the address (interface 0.2:
    // one query of the host's pool, whatever the number of workloads).
    let alloc = env::plugin("default_allocator")?;
    spec.host_extra = format!(
        "{}{}mode = \"enforce\"\n[policy.plugins.config]\nuntenanted = \"allow\"\n",
        env::plugin_toml("allocator", &alloc, "allocator", "deny", ""),
        env::plugin_toml("isolation", &path, "firewall", "deny", "")
    );
    let lab = env::lab_up(spec).await?;
    let mut ctl = env::control(&lab).await?;
    let n = checkpoints[2];
    // Every workload's namespace exists before the first attach (as a container's does before
    // its network is attached), so no namespace creation runs between the timed attaches.
    let mut namespaces = Vec::with_capacity(n);
    for i in 1..=n {
        let id = format!("w{i}");
        namespaces.push(
            weir::dataplane::netns::create(&lab.ns_name(&id))
                .with_context(|| format!("create namespace for {id}"))?,
        );
    }
    println!("  {n} namespaces created");
    env::settle().await;
    let mut out = AttachScale {
        runners,
        latencies: Vec::with_capacity(n),
        rules: HashMap::new(),
        stopped: None,
        kernel: HashMap::new(),
    };
    let mut window_start = None;
    for i in 1..=n {
        let id = format!("w{i}");
        let ns = &namespaces[i - 1];
        let runner = (i as u32 - 1) % runners + 1;
        // Alternate tenants on each runner (round-robin puts every `runners`-th one here).
        let tenant = if ((i - 1) / runners as usize).is_multiple_of(2) {
            "a"
        } else {
            "b"
        };
        if checkpoints.contains(&(i + 9)) {
            window_start = runner_kernel(&lab);
        }
        let started = Instant::now();
        let r = ctl
            .attach_workload(pb::AttachWorkloadRequest {
                runner: format!("r{runner}"),
                workload_id: id.clone(),
                netns: ns.display().to_string(),
                labels: [("tenant".to_string(), tenant.to_string())].into(),
                ..Default::default()
            })
            .await;
        let took = started.elapsed();
        if let Err(e) = r {
            out.stopped = Some(format!("{}: {}", e.code(), e.message()));
            println!("  attach #{i} failed: {}", e.message());
            break;
        }
        out.latencies.push(took);
        if checkpoints.contains(&i) {
            if let (Some((s0, n0)), Some((s1, n1))) = (window_start.take(), runner_kernel(&lab))
                && n1 > n0
            {
                out.kernel
                    .insert(i, Duration::from_secs_f64((s1 - s0) / (n1 - n0)));
            }
            out.rules.insert(i, fw_rules(&lab)?);
            println!(
                "  {i} attached, mean of the last 10: {}",
                fmt_dur(mean(&out.latencies[i - 10..]))
            );
        } else if i % 1_000 == 0 {
            println!("  {i} attached");
        }
    }
    if out.stopped.is_some() && out.latencies.len() >= 10 {
        let done = out.latencies.len();
        out.rules.insert(done, fw_rules(&lab)?);
    }
    Ok(out)
}

/// Runner 1's total seconds in `netlink.attach` (creating a workload's interfaces) and how many
/// there were, read from its Prometheus endpoint (the daemon's own kernel-operation metric).
fn runner_kernel(lab: &Lab) -> Option<(f64, f64)> {
    let text = weir::dataplane::netns::run_in(&lab.ns("r1"), || -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 9465))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .ok()?
    .ok()?;
    let value = |suffix: &str| -> f64 {
        let prefix = format!("weir_kernel_duration_seconds_{suffix}{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix) && l.contains("op=\"netlink.attach\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((value("sum"), value("count")))
}

/// Rules (not chains, sets, maps or named counters) in runner 1's table `inet weir_fw`.
fn fw_rules(lab: &Lab) -> Result<usize> {
    let out = env::run_in(
        &lab.ns("r1"),
        "nft",
        &["-a", "list", "table", "inet", "weir_fw"],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        // A table, chain, set, map or named counter opens a block: `… { # handle N`.
        .filter(|l| l.contains("# handle") && !l.contains("{ # handle"))
        .count())
}
