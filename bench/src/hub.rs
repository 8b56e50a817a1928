//! Hub scale (issue 16): one real host, runners registered through `Agent.Register` up to
//! 255, 1,000 and 4,000, and at each step the host killed and restarted — registration
//! latency, restart time, host CPU and resident set on one curve, in one run.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weir::lab::{Lab, LabSpec};
use weir_proto::v1 as pb;

use crate::env::{self, Opts, mb, rss_bytes};
use crate::report::{Report, RunInfo};
use crate::stats::{Samples, dur_ratio, fmt_dur};
use crate::table::Table;

pub const TITLE: &str = "Hub scale: registration, restart and memory with thousands of runners";

/// 12 node bits: 4,095 runner ids.
pub const PLAN: &str = "10.0.0.0/8/12/12";

/// KohakuRiver's own figures (its Python host, in namespaces on a machine of this kind;
/// /work/shared/STACK.md). Not measured by this suite.
const KR_REGISTRATION_P50: &str = "85 ms (growing with the number of runners)";
const KR_RESTART: &str = "0.95 s with 60 tunnels, none re-created";

pub async fn run(opts: Opts, run: &RunInfo) -> Result<Report> {
    let checkpoints: Vec<usize> = if opts.quick {
        vec![50, 100, 200]
    } else {
        vec![255, 1_000, 4_000]
    };
    println!("hub: registrations and restarts at {checkpoints:?} runners …");
    let curve = curve(&checkpoints).await?;
    let n_sessions = opts.n(1_000, 100);
    println!("hub: {n_sessions} simulated runner sessions …");
    let sessions = sessions(n_sessions).await.context("simulated sessions")?;
    let last = *checkpoints.last().unwrap_or(&0);

    let mut r = Report::new("hub", TITLE, opts, run);
    r.text(&format!(
        "One real `weir host` in a lab namespace (plan `{PLAN}`: 4,095 runner ids; the built-in \
         policy, the embedded store). `Agent.Register` is called directly over gRPC with the join \
         token, one after another, for distinct names and physical addresses from 198.18.0.0/15 \
         (no runner daemon answers there; no packet leaves the lab). Each registration allocates \
         an id, commits it and creates the runner's real `vxkr` VXLAN link before it answers. At \
         each step the host is killed with SIGKILL and started again: *ready* is the time from \
         spawn to `READY=1` (it serves its API), *CPU* the host's user + system time until then, \
         *flaps* the `vxkr` links whose ifindex changed (must be 0). RSS is the host's resident \
         set before the kill and once the restarted host is ready."
    ));
    let mut t = Table::new(&[
        "runners",
        "registration p50 (this step's last 10%)",
        "restart to ready",
        "restart CPU (user + sys)",
        "tunnels",
        "flaps",
        "RSS before → after restart",
    ]);
    for s in &curve.steps {
        t.row([
            s.runners.to_string(),
            fmt_dur(s.registration_p50_last_tenth),
            fmt_dur(s.ready),
            format!("{} + {}", fmt_dur(s.cpu.0), fmt_dur(s.cpu.1)),
            s.tunnels.to_string(),
            s.flaps.to_string(),
            format!("{} → {}", mb(s.rss_before), mb(s.rss_after)),
        ]);
    }
    t.row([
        "KohakuRiver — reference (published, not measured here)".to_string(),
        KR_REGISTRATION_P50.to_string(),
        KR_RESTART.to_string(),
    ]);
    r.table(&t);
    let n = curve.latencies.len();
    let tenth = (n / 10).max(1);
    let first = Samples::new(curve.latencies[..tenth].to_vec()).median();
    let last_p50 = Samples::new(curve.latencies[n - tenth..].to_vec()).median();
    r.text(&format!(
        "Registration p50 over all {n}: first 10% {} → last 10% {} ({} the first; target ≤ 1.5×).",
        fmt_dur(first),
        fmt_dur(last_p50),
        dur_ratio(last_p50, first),
    ));
    if let (Some(a), Some(b)) = (curve.steps.first(), curve.steps.last()) {
        r.text(&format!(
            "Restart: {} tunnels ready in {}, {} tunnels in {} ({:.1}× the time for {:.1}× the \
             tunnels); targets: 4,000 ≤ 1 s, 1,000 ≤ 250 ms, RSS with {last} runners ≤ 40 MB.",
            a.runners,
            fmt_dur(a.ready),
            b.runners,
            fmt_dur(b.ready),
            b.ready.as_secs_f64() / a.ready.as_secs_f64().max(1e-9),
            b.runners as f64 / a.runners.max(1) as f64,
        ));
    }
    r.text(&format!(
        "**Sessions.** Another lab, the same plan: {n} simulated runners (the benchmark's own \
         client, `bench/src/sessions.rs`), each registering, holding a real `Agent.Session` on \
         its own connection, answering every command with success and heartbeating every {hb} s \
         (the runner's default); when a session ends each comes back as `weir runner` does \
         (backoff from {start} ms doubling to {max} s, each wait drawn at random between half \
         and all of it). Host CPU is its user + system time over {window} s of heartbeats (all \
         sessions up, nothing else happening). Then the host is killed with SIGKILL and started \
         again; *back* counts from the kill to each session's acceptance; *busiest 100 ms* is \
         the most acceptances in any 100 ms (a thundering herd would put them all in one).",
        n = sessions.n,
        hb = crate::sessions::HEARTBEAT.as_secs(),
        start = weir::api::runner::BACKOFF_START.as_millis(),
        max = weir::api::runner::BACKOFF_MAX.as_secs(),
        window = SESSION_WINDOW.as_secs(),
    ));
    let mut t = Table::new(&[
        "sessions",
        "all up after start",
        "host CPU while heartbeating",
        "host RSS",
        "restart: host ready",
        "back: p50",
        "back: all",
        "busiest 100 ms",
        "host RSS after",
    ]);
    t.row([
        sessions.n.to_string(),
        fmt_dur(sessions.all_up),
        format!("{:.1}% of one core", sessions.cpu_share * 100.0),
        mb(sessions.rss),
        fmt_dur(sessions.ready),
        fmt_dur(sessions.back.median()),
        fmt_dur(sessions.back.pct(1.0)),
        sessions.busiest.to_string(),
        mb(sessions.rss_after),
    ]);
    r.table(&t);
    Ok(r)
}

/// How long the host's CPU is measured while sessions heartbeat.
const SESSION_WINDOW: Duration = Duration::from_secs(30);

struct Sessions {
    n: usize,
    all_up: Duration,
    cpu_share: f64,
    rss: u64,
    ready: Duration,
    back: Samples,
    busiest: usize,
    rss_after: u64,
}

async fn sessions(n: usize) -> Result<Sessions> {
    let spec = plan_spec("hubs")?;
    let mut lab = env::lab_up(spec).await?;
    env::settle().await;
    let started = Instant::now();
    let fleet = crate::sessions::Fleet::start(&lab, n);
    let result = async {
        fleet.wait_connected(n, Duration::from_secs(300)).await?;
        let all_up = started.elapsed();
        // Let the joins' publications finish, then measure a quiet stretch of heartbeats.
        tokio::time::sleep(crate::sessions::HEARTBEAT * 2).await;
        let pid = host_pid(&lab)?;
        let (u0, s0) = cpu_of(pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(SESSION_WINDOW).await;
        let (u1, s1) = cpu_of(pid)?;
        let cpu_share = ((u1 + s1) - (u0 + s0)).as_secs_f64() / t0.elapsed().as_secs_f64();
        let rss = rss_bytes(pid)?;
        let (killed, ready) = kill_and_restart(&mut lab).await?;
        fleet.wait_connected(n, Duration::from_secs(120)).await?;
        let back = fleet.accepted_since(killed);
        let busiest = busiest(&back, Duration::from_millis(100));
        let rss_after = rss_bytes(host_pid(&lab)?)?;
        println!(
            "  {n} sessions: CPU {:.1}%, back within {}",
            cpu_share * 100.0,
            fmt_dur(back.iter().max().copied().unwrap_or_default())
        );
        Ok(Sessions {
            n,
            all_up,
            cpu_share,
            rss,
            ready,
            back: Samples::new(back),
            busiest,
            rss_after,
        })
    }
    .await;
    fleet.stop().await;
    result
}

/// The most of `times` that fall in any window of length `w`.
fn busiest(times: &[Duration], w: Duration) -> usize {
    let mut t = times.to_vec();
    t.sort();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

struct Step {
    runners: usize,
    registration_p50_last_tenth: Duration,
    ready: Duration,
    cpu: (Duration, Duration),
    tunnels: usize,
    flaps: usize,
    rss_before: u64,
    rss_after: u64,
}

struct Curve {
    steps: Vec<Step>,
    /// Every registration's latency, in order.
    latencies: Vec<Duration>,
}

async fn curve(checkpoints: &[usize]) -> Result<Curve> {
    let spec = plan_spec("hub")?;
    let mut lab = env::lab_up(spec).await?;
    env::settle().await;
    let mut latencies = Vec::new();
    let mut steps = Vec::new();
    for &n in checkpoints {
        let from = latencies.len();
        let lat = register(&lab, from, n).await?;
        let tenth = (lat.len() / 10).max(1);
        let registration_p50_last_tenth = Samples::new(lat[lat.len() - tenth..].to_vec()).median();
        latencies.extend(lat);
        let before = tunnels(&lab).await?;
        if before.len() != n {
            bail!(
                "{n} runners registered but the host has {} vxkr links",
                before.len()
            );
        }
        let rss_before = rss_bytes(host_pid(&lab)?)?;
        env::settle().await;
        let (_, ready) = kill_and_restart(&mut lab).await?;
        let pid = host_pid(&lab)?;
        let cpu = cpu_of(pid)?;
        let rss_after = rss_bytes(pid)?;
        let after = tunnels(&lab).await?;
        let flaps = before
            .iter()
            .filter(|(name, index)| after.get(*name) != Some(index))
            .count();
        println!(
            "  {n} runners: restart {} , flaps {flaps}, RSS {} → {}",
            fmt_dur(ready),
            mb(rss_before),
            mb(rss_after)
        );
        steps.push(Step {
            runners: n,
            registration_p50_last_tenth,
            ready,
            cpu,
            tunnels: after.len(),
            flaps,
            rss_before,
            rss_after,
        });
    }
    Ok(Curve { steps, latencies })
}

/// SIGKILL the host and start it again: when it was killed, and how long until it was ready.
async fn kill_and_restart(lab: &mut Lab) -> Result<(Instant, Duration)> {
    lab.host
        .as_mut()
        .context("the lab has no host")?
        .stop(libc::SIGKILL)
        .context("kill the host")?;
    let killed = Instant::now();
    lab.start_host().await.context("restart the host")?;
    Ok((killed, killed.elapsed()))
}

fn host_pid(lab: &Lab) -> Result<u32> {
    Ok(lab.host.as_ref().context("the lab has no host")?.pid)
}

/// (user, system) CPU time of a process so far, from /proc/PID/stat.
fn cpu_of(pid: u32) -> Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no field {} in /proc/{pid}/stat", i + 3))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let d = |t: u64| Duration::from_micros(t * 1_000_000 / hz);
    Ok((d(ticks(11)?), d(ticks(12)?)))
}

/// A lab spec (`env::lab_spec`) with the plan [`PLAN`]: room for 4,095 runners.
pub fn plan_spec(tag: &str) -> Result<LabSpec> {
    let mut spec = env::lab_spec(tag)?;
    spec.overlay = format!("subnet = \"{PLAN}\"\n");
    Ok(spec)
}

/// The physical IP of synthetic runner `i` (0-based), from 198.18.0.0/15.
pub fn synthetic_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i as u32)
}

/// Register runners `from..to` directly through gRPC; their latencies.
pub async fn register(lab: &Lab, from: usize, to: usize) -> Result<Vec<Duration>> {
    let mut agent = env::agent(lab).await?;
    let mut out = Vec::with_capacity(to.saturating_sub(from));
    for i in from..to {
        let name = format!("s{i:04}");
        let started = Instant::now();
        let resp = agent
            .register(pb::RegisterRequest {
                name: name.clone(),
                physical_ip: synthetic_ip(i).to_string(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("register {name}"))?
            .into_inner();
        out.push(started.elapsed());
        if resp.runner_id == 0 {
            bail!("register {name}: no runner id in the answer");
        }
    }
    Ok(out)
}

/// The host's `vxkr*` links: name → ifindex.
pub async fn tunnels(lab: &Lab) -> Result<BTreeMap<String, u32>> {
    let nl = weir::dataplane::netlink::Netlink::in_namespace(&lab.ns("host"))
        .context("netlink in the host namespace")?;
    Ok(nl
        .links()
        .await
        .context("list the host's links")?
        .into_iter()
        .filter(|l| l.name.starts_with("vxkr"))
        .map(|l| (l.name, l.index))
        .collect())
}
