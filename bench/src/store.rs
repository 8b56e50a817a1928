//! The host's state store (issue 17): the attach section's rounds and the hub section's
//! registrations with the host on redb (embedded, the default) and on etcd (one member started
//! inside the host's namespace), one back end after the other in one run.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weir::lab::{Lab, LabSpec};

use crate::attach::{self, Latencies, WARMUP};
use crate::env::{self, Opts};
use crate::hub::{self, PLAN};
use crate::report::{Report, RunInfo};
use crate::stats::{Samples, dur_ratio, fmt_dur};
use crate::table::Table;

pub const TITLE: &str = "State store: the host on etcd against the host on redb";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Redb,
    Etcd,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::Etcd => "etcd",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Backend::Redb => "redb (embedded, the default)",
            Backend::Etcd => "etcd, 1 member in the host's namespace",
        }
    }

    /// A lab spec `bench-<tag>-<backend>` with the host's state on this back end.
    fn spec(self, spec: impl FnOnce(&str) -> Result<LabSpec>, tag: &str) -> Result<LabSpec> {
        let mut s = spec(&format!("{tag}-{}", self.name()))?;
        s.etcd_members = match self {
            Backend::Redb => 0,
            Backend::Etcd => 1,
        };
        Ok(s)
    }

    /// Where the host's state lives on disk in `lab`: redb's state directory, etcd's data.
    fn data_dir(self, lab: &Lab) -> Result<PathBuf> {
        match self {
            // The lab's generated configuration: `state_dir = "<lab dir>/host-state"`.
            Backend::Redb => {
                let dir = lab.dir.join("host-state");
                if !dir.join("weir.redb").is_file() {
                    bail!("no weir.redb in {}", dir.display());
                }
                Ok(dir)
            }
            Backend::Etcd => Ok(lab
                .etcd
                .as_ref()
                .context("the lab has no etcd")?
                .dir()
                .to_path_buf()),
        }
    }
}

/// The filesystem a directory is on.
struct Disk {
    dir: PathBuf,
    dev: u64,
    /// `SOURCE (FSTYPE)` from findmnt.
    what: String,
}

impl Disk {
    fn of(dir: &Path) -> Result<Disk> {
        let dev = std::fs::metadata(dir)
            .with_context(|| format!("stat {}", dir.display()))?
            .dev();
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE,FSTYPE", "-T"])
            .arg(dir)
            .output()
            .context("run findmnt")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut f = text.split_whitespace();
        let what = match (f.next(), f.next()) {
            (Some(source), Some(fstype)) => format!("{source} ({fstype})"),
            _ => "an unknown filesystem".to_string(),
        };
        Ok(Disk {
            dir: dir.to_path_buf(),
            dev,
            what,
        })
    }
}

/// What one back end measured.
struct Measured {
    backend: Backend,
    attach: Latencies,
    /// Store commits per attach+detach round, counted on etcd (its writer counter).
    commits_per_round: Option<f64>,
    /// Store commits per registration, counted the same way.
    commits_per_registration: Option<f64>,
    registrations: Samples,
    /// Sum of the registrations' latencies (they run one after another).
    total: Duration,
    disk: Disk,
}

pub async fn run(opts: Opts, run: &RunInfo) -> Result<Report> {
    // The attach section's N.
    let n = opts.n(300, 30);
    let regs = opts.n(1_000, 100);
    let mut all = Vec::new();
    for b in [Backend::Redb, Backend::Etcd] {
        println!("{}: {n} attach+detach through a lab …", b.name());
        env::settle().await;
        let (attach, commits_per_round, disk) = attaches(b, n)
            .await
            .with_context(|| format!("attach with the host on {}", b.name()))?;
        println!("{}: {regs} registrations …", b.name());
        env::settle().await;
        let (registrations, commits_per_registration) = registrations(b, regs)
            .await
            .with_context(|| format!("registrations with the host on {}", b.name()))?;
        let total = registrations.iter().sum();
        println!(
            "  {}: attach p50 {}, registration p50 {}, {regs} in {}",
            b.name(),
            fmt_dur(attach.attach.median()),
            fmt_dur(Samples::new(registrations.clone()).median()),
            fmt_dur(total)
        );
        all.push(Measured {
            backend: b,
            attach,
            commits_per_round,
            commits_per_registration,
            registrations: Samples::new(registrations),
            total,
            disk,
        });
    }
    let (redb, etcd) = (&all[0], &all[1]);

    let mut r = Report::new("store", TITLE, opts, run);
    r.text(&format!(
        "The same two measurements with the host's state on each back end, redb first, then etcd, \
         each in fresh labs. **Attach**: the attach section's rounds — N = {n} workloads (after \
         {WARMUP} untimed rounds), `Control.AttachWorkload` then `Control.DetachWorkload` over \
         the control socket of a one-runner lab, each workload in its own fresh namespace. \
         **Registration**: the hub section's — {regs} `Agent.Register` calls one after another \
         (plan `{PLAN}`, distinct names and physical addresses from 198.18.0.0/15), each \
         allocating a runner id, committing it and creating the runner's `vxkr` link before it \
         answers; *total* is the sum of the {regs} latencies. **redb**: the default \
         `[store]`, `state_dir/weir.redb`. **etcd**: `[store] backend = \"etcd\"`, one etcd \
         member started inside the host's network namespace (the host reaches it on that \
         namespace's 127.0.0.1:2379, so no network beyond loopback), with the lab's settings \
         (10 ms heartbeat, 100 ms election timeout) and otherwise etcd's defaults."
    ));
    let same = redb.disk.dev == etcd.disk.dev;
    r.text(&format!(
        "Both back ends fsync every commit before it is acknowledged: redb with its default \
         durability, etcd its write-ahead log (Raft's rule; nothing turns it off here). For a \
         fair comparison both keep their files on the same kind of disk: redb's state \
         directory (`{}`) is on {}, etcd's data directory (`{}`) on {}{}. On a tmpfs neither \
         fsync would cost anything and the figures would compare only CPU.",
        redb.disk.dir.display(),
        redb.disk.what,
        etcd.disk.dir.display(),
        etcd.disk.what,
        if same {
            " — the same filesystem"
        } else {
            " — **not the same filesystem: the comparison is skewed by the disks**"
        },
    ));
    let mut t = Table::new(&[
        "host's store",
        "attach p50",
        "attach p95",
        "attach p99",
        "detach p50",
        "detach p95",
        "registration p50",
        "registration p95",
        &format!("{regs} registrations (total)"),
    ]);
    for m in &all {
        t.row([
            m.backend.label().to_string(),
            fmt_dur(m.attach.attach.median()),
            fmt_dur(m.attach.attach.pct(0.95)),
            fmt_dur(m.attach.attach.pct(0.99)),
            fmt_dur(m.attach.detach.median()),
            fmt_dur(m.attach.detach.pct(0.95)),
            fmt_dur(m.registrations.median()),
            fmt_dur(m.registrations.pct(0.95)),
            fmt_dur(m.total),
        ]);
    }
    let ratio = |f: &dyn Fn(&Measured) -> Duration| dur_ratio(f(etcd), f(redb));
    t.row([
        "etcd/redb".to_string(),
        ratio(&|m| m.attach.attach.median()),
        ratio(&|m| m.attach.attach.pct(0.95)),
        ratio(&|m| m.attach.attach.pct(0.99)),
        ratio(&|m| m.attach.detach.median()),
        ratio(&|m| m.attach.detach.pct(0.95)),
        ratio(&|m| m.registrations.median()),
        ratio(&|m| m.registrations.pct(0.95)),
        ratio(&|m| m.total),
    ]);
    r.table(&t);
    let per = |c: Option<f64>| c.map_or_else(|| "–".into(), |c| format!("{c:.2}"));
    let one = if etcd.commits_per_round == Some(2.0) && etcd.commits_per_registration == Some(1.0) {
        " — each acknowledged attach, detach and registration waited for exactly one such \
         transaction"
    } else {
        ""
    };
    let (per_round, per_registration) = (
        per(etcd.commits_per_round),
        per(etcd.commits_per_registration),
    );
    r.text(&format!(
        "A ratio above 1× means the host on etcd is slower. On etcd each store commit is one \
         etcd transaction: its compares guard every key it writes (the record, and the claim on \
         its runner id or address, exactly as this host last saw them; the host's own commit \
         counter), its puts apply only if all hold, and etcd answers once the entry is in its \
         fsynced log — only then does the host answer its caller. Counted on etcd (the host's \
         commit counter before and after): {per_round} commits per attach+detach round, \
         {per_registration} per registration{one}. Reproduce: `./scripts/bench.sh store` \
         (as root)."
    ));
    Ok(r)
}

/// The attach section's rounds with the host on `b`: latencies, commits per round (etcd), and
/// where the state was.
async fn attaches(b: Backend, n: usize) -> Result<(Latencies, Option<f64>, Disk)> {
    let mut spec = b.spec(env::lab_spec, "sta")?;
    spec.runners = 1;
    let lab = env::lab_up(spec).await?;
    let before = commits(&lab)?;
    let lat = attach::weir_rounds_in(&lab, n).await?;
    let after = commits(&lab)?;
    let per_round = match (before, after) {
        (Some(a), Some(z)) => Some(z.saturating_sub(a) as f64 / (WARMUP + n) as f64),
        _ => None,
    };
    let disk = Disk::of(&b.data_dir(&lab)?)?;
    Ok((lat, per_round, disk))
}

/// The hub section's registrations of `n` runners with the host on `b`: their latencies and
/// commits per registration (etcd).
async fn registrations(b: Backend, n: usize) -> Result<(Vec<Duration>, Option<f64>)> {
    let lab = env::lab_up(b.spec(hub::plan_spec, "str")?).await?;
    env::settle().await;
    let before = commits(&lab)?;
    let lat = hub::register(&lab, 0, n).await?;
    let after = commits(&lab)?;
    // The answers are real: a tunnel for each, and (on etcd) a record for each there.
    let tunnels = hub::tunnels(&lab).await?.len();
    if tunnels != n {
        bail!("{n} runners registered but the host has {tunnels} vxkr links");
    }
    if lab.etcd.is_some() {
        let out = etcdctl(
            &lab,
            &[
                "get",
                "--prefix",
                &format!("{}runners/", prefix(&lab)),
                "--keys-only",
                "-w",
                "json",
            ],
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("read etcdctl's answer: {out}"))?;
        let count = v["count"].as_u64().unwrap_or(0);
        if count != n as u64 {
            bail!("{n} runners registered but etcd holds {count} runner records");
        }
    }
    let per_registration = match (before, after) {
        (Some(a), Some(z)) => Some(z.saturating_sub(a) as f64 / n.max(1) as f64),
        _ => None,
    };
    Ok((lat, per_registration))
}

/// The lab's key prefix on etcd (its generated `[store] prefix`).
fn prefix(lab: &Lab) -> String {
    format!("/weir/{}/", lab.spec.name)
}

/// The host's commit count on etcd (the sum of the writer counters); `None` on redb.
fn commits(lab: &Lab) -> Result<Option<u64>> {
    if lab.etcd.is_none() {
        return Ok(None);
    }
    let out = etcdctl(
        lab,
        &[
            "get",
            "--prefix",
            &format!("{}writers/", prefix(lab)),
            "--print-value-only",
        ],
    )?;
    let counters = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse::<u64>()
                .with_context(|| format!("a writer counter on etcd reads {l:?}"))
        })
        .collect::<Result<Vec<u64>>>()?;
    if counters.is_empty() {
        bail!("no writer counter under {}writers/ on etcd", prefix(lab));
    }
    Ok(Some(counters.iter().sum()))
}

/// `etcdctl` (API v3) against the lab's etcd, run inside the host's namespace; its stdout.
fn etcdctl(lab: &Lab, args: &[&str]) -> Result<String> {
    let endpoints = lab
        .etcd
        .as_ref()
        .context("the lab has no etcd")?
        .endpoints()
        .join(",");
    let mut full = vec!["--endpoints", &endpoints, "--command-timeout", "10s"];
    full.extend_from_slice(args);
    let out = env::run_in(&lab.ns("host"), "etcdctl", &full)
        .context("etcdctl (Debian's etcd-client; ./scripts/bench.sh installs it)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
