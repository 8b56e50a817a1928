//! What every section shares: where things are, labs with unique names, guards that tear down
//! what a section builds by hand, gRPC clients, commands inside namespaces.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weir::lab::{self, Lab, LabSpec, run_in_namespace};

/// Options every section sees.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// Shrink every N for a smoke run.
    pub quick: bool,
}

impl Opts {
    /// `full` in a full run, `quick` in a quick one.
    pub fn n(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }
}

/// The repository's root (this crate lives in `bench/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// The `weir` binary built beside this one (`target/release/weir`).
pub fn weir_bin() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locate weir-bench")?;
    let bin = me.with_file_name("weir");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p weir` (./scripts/bench.sh does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A plugin component built by `cd plugins && cargo build --release --target wasm32-wasip2`.
pub fn plugin(crate_name: &str) -> Result<PathBuf> {
    let p = repo_root()
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{crate_name}.wasm"));
    if !p.is_file() {
        bail!(
            "{} is missing: build the plugins (cd plugins && cargo build --release --target wasm32-wasip2; ./scripts/bench.sh does)",
            p.display()
        );
    }
    Ok(p)
}

/// A `[[policy.plugins]]` entry of a host configuration.
pub fn plugin_toml(name: &str, path: &Path, hook: &str, on_error: &str, extra: &str) -> String {
    format!(
        "[[policy.plugins]]\nname = \"{name}\"\npath = \"{}\"\nhooks = [\"{hook}\"]\non_error = \"{on_error}\"\n{extra}\n",
        path.display()
    )
}

/// A lab spec named `bench-<tag>` (namespaces `weir-bench-<tag>-…`) with no runners and no
/// workloads yet, after removing whatever a crashed earlier run left under that name.
pub fn lab_spec(tag: &str) -> Result<LabSpec> {
    let name = format!("bench-{tag}");
    lab::down(&name);
    let mut spec = LabSpec::new(&name, weir_bin()?);
    spec.runners = 0;
    spec.workloads_per_runner = 0;
    Ok(spec)
}

/// Start a lab; its `Drop` tears everything down.
pub async fn lab_up(spec: LabSpec) -> Result<Lab> {
    let name = spec.name.clone();
    Lab::up(spec)
        .await
        .with_context(|| format!("build lab {name}"))
}

/// Namespaces made by hand under `weir-<group>-`, removed (with every process inside them)
/// when this guard is dropped — on success, on error and on panic.
pub struct NsGroup {
    group: String,
}

impl NsGroup {
    /// Claim the group `bench-<tag>`, removing leftovers of a crashed earlier run.
    pub fn new(tag: &str) -> Self {
        let group = format!("bench-{tag}");
        lab::down(&group);
        Self { group }
    }

    /// The full name of member `member` (`weir-bench-<tag>-<member>`).
    pub fn name(&self, member: &str) -> String {
        lab::ns_name(&self.group, member)
    }

    pub fn path(&self, member: &str) -> PathBuf {
        weir::dataplane::netns::named_path(&self.name(member))
    }

    /// Create member `member`'s namespace (loopback up).
    pub fn create(&self, member: &str) -> Result<PathBuf> {
        weir::dataplane::netns::create(&self.name(member))
            .with_context(|| format!("create namespace {}", self.name(member)))
    }

    /// Delete one member's namespace now.
    pub fn delete(&self, member: &str) -> Result<()> {
        weir::dataplane::netns::delete(&self.name(member))
            .with_context(|| format!("delete namespace {}", self.name(member)))
    }
}

impl Drop for NsGroup {
    fn drop(&mut self) {
        lab::down(&self.group);
    }
}

/// A child process killed when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `program args…` inside the namespace at `ns`; fail with its stderr unless it succeeds.
pub fn run_in(ns: &Path, program: &str, args: &[&str]) -> Result<Output> {
    let out = output_in(ns, program, args)?;
    if !out.status.success() {
        bail!(
            "`{program} {}` in {} failed ({}): {}",
            args.join(" "),
            ns.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Run `program args…` inside the namespace at `ns` and return its output, whatever its status.
pub fn output_in(ns: &Path, program: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    run_in_namespace(&mut cmd, ns)?
        .output()
        .with_context(|| format!("run {program} in {}", ns.display()))
}

/// Spawn `program args…` inside the namespace at `ns`, killed when the guard is dropped.
pub fn spawn_in(ns: &Path, program: &str, args: &[&str]) -> Result<ChildGuard> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = run_in_namespace(&mut cmd, ns)?
        .spawn()
        .with_context(|| format!("start {program} in {}", ns.display()))?;
    Ok(ChildGuard(child))
}

/// A `Control` client on a lab's control socket.
pub type Control = weir_proto::v1::control_client::ControlClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        weir::api::auth::Bearer,
    >,
>;

/// An `Agent` client on a lab's control socket (what runners call).
pub type Agent = weir_proto::v1::agent_client::AgentClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        weir::api::auth::Bearer,
    >,
>;

async fn channel(lab: &Lab) -> Result<tonic::transport::Channel> {
    weir::api::client::connect(&lab.control_url(), Default::default())
        .await
        .with_context(|| format!("connect to {}", lab.control_url()))
}

/// A `Control` client presenting the lab's control token.
pub async fn control(lab: &Lab) -> Result<Control> {
    let bearer = weir::api::auth::Bearer::new(Some(&lab.control_token()))
        .map_err(|e| anyhow::anyhow!("control token: {e}"))?;
    Ok(
        weir_proto::v1::control_client::ControlClient::with_interceptor(
            channel(lab).await?,
            bearer,
        ),
    )
}

/// An `Agent` client presenting the lab's join token.
pub async fn agent(lab: &Lab) -> Result<Agent> {
    let bearer = weir::api::auth::Bearer::new(Some(&lab.join_token()))
        .map_err(|e| anyhow::anyhow!("join token: {e}"))?;
    Ok(weir_proto::v1::agent_client::AgentClient::with_interceptor(
        channel(lab).await?,
        bearer,
    ))
}

/// A process's resident set (`VmRSS` of /proc/PID/status), in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

/// Bytes as MB (10^6), the unit of the published figures.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Poll `cond` every 100 ms until it holds, or fail naming `what` after `timeout`.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Wait until the machine is quiet — under 15% of its CPU time busy over half a second — or
/// 60 s have passed. Tearing a big lab down leaves the kernel busy for a while (it frees
/// namespaces and their links in the background); a measurement started meanwhile would share
/// the CPU with that work.
pub async fn settle() {
    let started = std::time::Instant::now();
    let mut said = false;
    while started.elapsed() < Duration::from_secs(60) {
        let Some(a) = cpu_times() else { return };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(b) = cpu_times() else { return };
        let total = (b.0 - a.0).max(1) as f64;
        let busy = (b.1 - a.1) as f64 / total;
        if busy < 0.15 {
            if said {
                println!("  (settled after {:.1} s)", started.elapsed().as_secs_f64());
            }
            return;
        }
        if !said {
            println!(
                "  waiting for the machine to settle ({:.0}% busy) …",
                busy * 100.0
            );
            said = true;
        }
    }
}

/// (total, busy) jiffies of all CPUs from /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total, total - idle))
}
