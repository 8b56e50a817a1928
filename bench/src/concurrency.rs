//! Concurrent attaches and detaches: 50 clients, each on its own connection to the host's
//! control socket, attach 1,000 workloads spread over two runners, then detach them all.
//! Throughput and per-call latency, and the checks that every acknowledged attach is there
//! (store and kernel) and that nothing is left after the detaches.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weir_proto::v1 as pb;

use crate::env::{self, Opts};
use crate::report::{Report, RunInfo};
use crate::stats::{Samples, fmt_dur};
use crate::table::Table;

pub const TITLE: &str = "Concurrency: 1,000 attaches, then 1,000 detaches, from 50 clients";

/// Concurrent clients, each with its own connection.
const CLIENTS: usize = 50;

struct Phase {
    samples: Samples,
    wall: Duration,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }
}

pub async fn run(opts: Opts, run: &RunInfo) -> Result<Report> {
    let n = opts.n(1000, 100);
    let mut spec = env::lab_spec("cc")?;
    spec.runners = 2;
    let lab = env::lab_up(spec).await?;
    println!("creating {n} workload namespaces (untimed) …");
    let mut paths = Vec::with_capacity(n);
    for i in 0..n {
        let name = lab.ns_name(&format!("c{i}"));
        paths.push(
            weir::dataplane::netns::create(&name)
                .with_context(|| format!("create namespace {name}"))?
                .display()
                .to_string(),
        );
    }
    let paths = Arc::new(paths);
    env::settle().await;
    println!("{n} attaches from {CLIENTS} clients …");
    let attach = phase(&lab, n, "attach", {
        let paths = paths.clone();
        move |i| {
            Op::Attach(pb::AttachWorkloadRequest {
                runner: if i % 2 == 0 { "r1" } else { "r2" }.into(),
                workload_id: format!("c{i}"),
                netns: paths[i].clone(),
                ..Default::default()
            })
        }
    })
    .await?;
    // Every acknowledged attach is in the store and in its namespace.
    let mut ctl = env::control(&lab).await?;
    let listed = list_all(&mut ctl).await?;
    if listed.len() != n {
        bail!(
            "{} workloads listed after {n} acknowledged attaches",
            listed.len()
        );
    }
    for w in &listed {
        let got = lab.address_of(&w.workload_id).await;
        if got.map(|a| a.to_string()) != Some(w.ip.clone()) {
            bail!(
                "{} is listed with {} but its eth0 has {got:?}",
                w.workload_id,
                w.ip
            );
        }
    }
    let unique: std::collections::BTreeSet<(String, String)> = listed
        .iter()
        .map(|w| (w.runner.clone(), w.ip.clone()))
        .collect();
    if unique.len() != n {
        bail!("an address is on two workloads");
    }
    diagnose_clean(&mut ctl).await?;
    env::settle().await;
    println!("{n} detaches from {CLIENTS} clients …");
    let detach = phase(&lab, n, "detach", |i| {
        Op::Detach(pb::DetachWorkloadRequest {
            workload_id: format!("c{i}"),
            ..Default::default()
        })
    })
    .await?;
    let left = list_all(&mut ctl).await?;
    if !left.is_empty() {
        bail!("{} workloads listed after {n} detaches", left.len());
    }
    // Detach is acknowledged once durable; the runners remove the interfaces right after.
    let deadline = Instant::now() + Duration::from_secs(60);
    'wait: loop {
        let mut left = None;
        for i in 0..n {
            if lab.address_of(&format!("c{i}")).await.is_some() {
                left = Some(i);
                break;
            }
        }
        match left {
            None => break 'wait,
            Some(i) if Instant::now() > deadline => {
                bail!("c{i} still has an interface 60 s after its detach")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    diagnose_clean(&mut ctl).await?;

    let mut r = Report::new("concurrency", TITLE, opts, run);
    r.text(&format!(
        "N = {n} workloads over two runners (alternating), {CLIENTS} concurrent clients, each with its own \
         connection to the host's unix control socket, each taking the next workload until none is left. \
         The real `weir host` and two `weir runner`s in namespaces; every namespace created before the timed \
         region. Checked after the attaches: all {n} listed, each namespace's eth0 holds its listed address, \
         no address twice, `Diagnose` (weir doctor) clean; after the detaches: none listed, no interface left, \
         `Diagnose` clean."
    ));
    let mut t = Table::new(&["phase", "calls", "per second", "p50", "p99", "max"]);
    for (what, p) in [("attach", &attach), ("detach", &detach)] {
        t.row([
            what.to_string(),
            p.samples.len().to_string(),
            format!("{:.0}", p.per_second()),
            fmt_dur(p.samples.median()),
            fmt_dur(p.samples.pct(0.99)),
            fmt_dur(p.samples.pct(1.0)),
        ]);
    }
    r.table(&t);
    Ok(r)
}

enum Op {
    Attach(pb::AttachWorkloadRequest),
    Detach(pb::DetachWorkloadRequest),
}

/// `n` calls made by `CLIENTS` concurrent clients; every call must succeed.
async fn phase(
    lab: &weir::lab::Lab,
    n: usize,
    label: &str,
    make: impl Fn(usize) -> Op + Send + Sync + 'static,
) -> Result<Phase> {
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(env::control(lab).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CLIENTS);
    for mut c in clients {
        let (make, next) = (make.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(took);
                }
                let t = Instant::now();
                let at = t - started;
                match make(i) {
                    Op::Attach(req) => {
                        c.attach_workload(req)
                            .await
                            .with_context(|| format!("attach c{i}"))?;
                    }
                    Op::Detach(req) => {
                        c.detach_workload(req)
                            .await
                            .with_context(|| format!("detach c{i}"))?;
                    }
                }
                took.push((at, t.elapsed(), i));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.context("client task")??);
    }
    let wall = started.elapsed();
    if let Ok(path) = std::env::var("WEIR_BENCH_TIMELINE") {
        // One line per call (start offset, duration, index), to find when the tail happens.
        let mut lines: Vec<_> = all
            .iter()
            .map(|(at, took, i)| {
                format!(
                    "{:.3} {:.3} {i}",
                    at.as_secs_f64() * 1e3,
                    took.as_secs_f64() * 1e3
                )
            })
            .collect();
        lines.sort_by(|a, b| {
            let k = |s: &str| {
                s.split(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            k(a).total_cmp(&k(b))
        });
        let path = format!("{path}.{label}");
        let _ = std::fs::write(&path, lines.join("\n"));
    }
    Ok(Phase {
        samples: Samples::new(all.into_iter().map(|(_, took, _)| took).collect()),
        wall,
    })
}

async fn list_all(ctl: &mut env::Control) -> Result<Vec<pb::Workload>> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = ctl
            .list_workloads(pb::ListWorkloadsRequest {
                page_token,
                ..Default::default()
            })
            .await
            .context("list workloads")?
            .into_inner();
        all.extend(page.workloads);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

async fn diagnose_clean(ctl: &mut env::Control) -> Result<()> {
    let f = ctl
        .diagnose(pb::DiagnoseRequest::default())
        .await
        .context("diagnose")?
        .into_inner()
        .findings;
    if !f.is_empty() {
        bail!("weir doctor finds differences: {f:?}");
    }
    Ok(())
}
