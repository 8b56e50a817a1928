//! Attach + detach latency: Weir's real daemons (gRPC `AttachWorkload` / `DetachWorkload` on
//! the lab's control socket) against the reference CNI `bridge` + `host-local` plugins executed
//! per the CNI spec. Each workload gets its own fresh namespace, created and deleted outside
//! the timed region.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weir::lab::Lab;
use weir_proto::v1 as pb;

use crate::env::{self, NsGroup, Opts};
use crate::report::{Report, RunInfo};
use crate::stats::{Samples, dur_ratio, fmt_dur};
use crate::table::Table;

pub const TITLE: &str = "Attach and detach: Weir against the reference CNI bridge plugin";

/// Where the reference CNI plugins are (Debian's `containernetworking-plugins`).
pub const CNI_DIR: &str = "/usr/lib/cni";
/// host-local's state for this run.
const CNI_DATA_DIR: &str = "/run/weir-bench/cni-ipam";
/// Untimed attach+detach rounds before measuring (caches, first connections).
pub const WARMUP: usize = 5;

/// Attach and detach latencies of one system.
pub struct Latencies {
    pub attach: Samples,
    pub detach: Samples,
    pub both: Samples,
}

impl Latencies {
    fn from_pairs(pairs: Vec<(Duration, Duration)>) -> Self {
        Self {
            attach: Samples::new(pairs.iter().map(|p| p.0).collect()),
            detach: Samples::new(pairs.iter().map(|p| p.1).collect()),
            both: Samples::new(pairs.iter().map(|p| p.0 + p.1).collect()),
        }
    }
}

pub async fn run(opts: Opts, run: &RunInfo) -> Result<Report> {
    let n = opts.n(300, 30);
    println!("Weir: {n} attach+detach through the daemons of a lab …");
    let weir = weir_rounds(n).await.context("Weir attach/detach")?;
    println!("CNI bridge + host-local: {n} ADD+DEL …");
    env::settle().await;
    let cni = tokio::task::spawn_blocking(move || cni_rounds(n))
        .await
        .context("CNI rounds")?
        .context("CNI bridge attach/detach")?;

    let mut r = Report::new("attach", TITLE, opts, run);
    r.text(&format!(
        "N = {n} workloads for each system (after {WARMUP} untimed rounds), one after another, each into its own \
         fresh network namespace (created and deleted outside the timed region). \
         **Weir**: `Control.AttachWorkload` then `Control.DetachWorkload` over the lab's unix control socket; \
         the real `weir host` and `weir runner` in namespaces do the work (allocation through the built-in \
         policy, a durable store commit, the command over the runner's session, a veth created directly in \
         the workload's namespace, address, MTU and default route, and the answer back). \
         **CNI**: `{CNI_DIR}/bridge` with `host-local` IPAM executed per the CNI spec (`CNI_COMMAND=ADD`/`DEL`, \
         config on stdin, cniVersion 1.0.0, MTU 1450 and a default route like Weir's), run inside a dedicated \
         namespace that holds its bridge."
    ));
    let mut t = Table::new(&[
        "operation",
        "Weir median",
        "Weir p95",
        "CNI median",
        "CNI p95",
        "Weir/CNI median",
        "Weir/CNI p95",
    ]);
    for (what, w, c) in [
        ("attach (CNI ADD)", &weir.attach, &cni.attach),
        ("detach (CNI DEL)", &weir.detach, &cni.detach),
        ("attach + detach", &weir.both, &cni.both),
    ] {
        t.row([
            what.to_string(),
            fmt_dur(w.median()),
            fmt_dur(w.pct(0.95)),
            fmt_dur(c.median()),
            fmt_dur(c.pct(0.95)),
            dur_ratio(w.median(), c.median()),
            dur_ratio(w.pct(0.95), c.pct(0.95)),
        ]);
    }
    r.table(&t);
    r.text(
        "A ratio below 1× means Weir is faster. The CNI figures include starting the plugin \
         process (a Go binary) for each call, as a container runtime does; Weir's include a gRPC \
         round trip to the host and the host's round trip to the runner.",
    );
    Ok(r)
}

/// `n` timed attach+detach rounds through a one-runner lab.
async fn weir_rounds(n: usize) -> Result<Latencies> {
    let mut spec = env::lab_spec("at")?;
    spec.runners = 1;
    let lab = env::lab_up(spec).await?;
    weir_rounds_in(&lab, n).await
}

/// `WARMUP` untimed then `n` timed attach+detach rounds through runner `r1` of `lab` (whatever
/// its host is configured with: its store, its plan).
pub async fn weir_rounds_in(lab: &Lab, n: usize) -> Result<Latencies> {
    let mut ctl = env::control(lab).await?;
    env::settle().await;
    let mut pairs = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let id = format!("w{i}");
        let ns_name = lab.ns_name(&id);
        let ns = weir::dataplane::netns::create(&ns_name)
            .with_context(|| format!("create namespace {ns_name}"))?;
        let started = Instant::now();
        let attached = ctl
            .attach_workload(pb::AttachWorkloadRequest {
                runner: "r1".into(),
                workload_id: id.clone(),
                netns: ns.display().to_string(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("attach {id}"))?
            .into_inner();
        let attach = started.elapsed();
        if i == 0 {
            // The answer is real: the workload has its address.
            let got = lab.address_of(&id).await;
            if got.map(|a| a.to_string()) != Some(attached.ip.clone()) {
                bail!("attach {id} answered {} but eth0 has {got:?}", attached.ip);
            }
        }
        let started = Instant::now();
        ctl.detach_workload(pb::DetachWorkloadRequest {
            runner: "r1".into(),
            workload_id: id.clone(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("detach {id}"))?;
        let detach = started.elapsed();
        weir::dataplane::netns::delete(&ns_name)
            .with_context(|| format!("delete namespace {ns_name}"))?;
        if i >= WARMUP {
            pairs.push((attach, detach));
        }
    }
    Ok(Latencies::from_pairs(pairs))
}

/// Removes host-local's state directory when dropped.
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // And its parent, /run/weir-bench, when nothing else is in it.
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// `n` timed ADD+DEL rounds of the reference bridge plugin.
pub fn cni_rounds(n: usize) -> Result<Latencies> {
    for plugin in ["bridge", "host-local"] {
        if !Path::new(CNI_DIR).join(plugin).is_file() {
            bail!(
                "{CNI_DIR}/{plugin} is missing: apt-get install containernetworking-plugins (./scripts/bench.sh does)"
            );
        }
    }
    let group = NsGroup::new("cni");
    // The "node": where the plugin runs and its bridge lives (never the machine's namespace).
    let node = group.create("node")?;
    let _ = std::fs::remove_dir_all(CNI_DATA_DIR);
    let _data = DataDir(PathBuf::from(CNI_DATA_DIR));
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weir-bench",
        "type": "bridge",
        "bridge": "cni-bench0",
        "isGateway": true,
        "ipMasq": false,
        "mtu": 1450,
        "ipam": {
            "type": "host-local",
            "subnet": "10.129.0.0/16",
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": CNI_DATA_DIR,
        },
    })
    .to_string();
    let bridge = Path::new(CNI_DIR).join("bridge");
    cni_plugin_rounds(n, &group, &bridge, Some(&node), &config)
}

/// `WARMUP` untimed then `n` timed ADD+DEL rounds of the CNI plugin `plugin` with the network
/// config `config`, each into a fresh namespace of `group` (created and deleted outside the
/// timed region); the plugin runs inside `node` if given, else in this process's namespace.
pub fn cni_plugin_rounds(
    n: usize,
    group: &NsGroup,
    plugin: &Path,
    node: Option<&Path>,
    config: &str,
) -> Result<Latencies> {
    let mut pairs = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let member = format!("w{i}");
        let ns = group.create(&member)?;
        let id = format!("weir-bench-{i}");
        let started = Instant::now();
        let added = cni_exec(plugin, node, "ADD", &id, &ns, config)?;
        let add = started.elapsed();
        if i == 0 {
            let v: serde_json::Value =
                serde_json::from_slice(&added).context("read the CNI ADD result")?;
            let Some(addr) = v["ips"][0]["address"].as_str() else {
                bail!("CNI ADD gave no address: {v}");
            };
            // The answer is real: the container's eth0 has it.
            let shown = env::run_in(&ns, "ip", &["-4", "-o", "addr", "show", "eth0"])?;
            if !String::from_utf8_lossy(&shown.stdout).contains(&format!(" {addr} ")) {
                bail!(
                    "CNI ADD answered {addr} but eth0 has: {}",
                    String::from_utf8_lossy(&shown.stdout).trim()
                );
            }
        }
        let started = Instant::now();
        cni_exec(plugin, node, "DEL", &id, &ns, config)?;
        let del = started.elapsed();
        group.delete(&member)?;
        if i >= WARMUP {
            pairs.push((add, del));
        }
    }
    Ok(Latencies::from_pairs(pairs))
}

/// Execute a CNI plugin once, per the CNI spec (inside the namespace `node` if given).
fn cni_exec(
    plugin: &Path,
    node: Option<&Path>,
    command: &str,
    id: &str,
    ns: &Path,
    config: &str,
) -> Result<Vec<u8>> {
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", ns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(node) = node {
        weir::lab::run_in_namespace(&mut cmd, node)?;
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start the CNI plugin {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("plugin stdin")?
        .write_all(config.as_bytes())
        .context("write the network config to the plugin")?;
    let out = child.wait_with_output().context("wait for the plugin")?;
    if !out.status.success() {
        bail!(
            "CNI {command} for {id} failed ({}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}
