//! Weir through the container engines' own interfaces, beside their reference networks, in one
//! run on one lab (one runner, its Docker driver on): CNI ADD/DEL through `weir-cni` against the
//! reference `bridge` + `host-local`, and `docker run --rm … true` on Weir's Docker network
//! against Docker's own bridge, both networks served by one private dockerd in the runner's
//! namespace.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weir_proto::v1 as pb;

use crate::attach::{self, CNI_DIR, Latencies, WARMUP};
use crate::env::{self, NsGroup, Opts};
use crate::report::{Report, RunInfo};
use crate::stats::{Samples, dur_ratio, fmt_dur};
use crate::table::Table;

pub const TITLE: &str =
    "Engines: CNI through weir-cni and docker run on Weir, against the reference networks";

/// The image every container runs: the busybox-static rootfs, `docker import`ed.
const IMAGE: &str = "weir-bench-bb";
/// Untimed `docker run` pairs before measuring (image layers, the networks' first endpoints).
const DOCKER_WARMUP: usize = 2;

pub async fn run(opts: Opts, run: &RunInfo) -> Result<Report> {
    let n = opts.n(200, 20);
    let m = opts.n(30, 4);
    let weir_cni = env::weir_bin()?.with_file_name("weir-cni");
    if !weir_cni.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release --workspace` (./scripts/bench.sh does)",
            weir_cni.display()
        );
    }
    let docker = docker_cli()?;

    let mut spec = env::lab_spec("en")?;
    spec.runners = 1;
    spec.docker = true;
    let lab = env::lab_up(spec).await?;
    let socket = lab.dir.join("r1.sock");
    let probe = (weir_cni.clone(), socket.clone());
    env::wait_until(
        "runner r1 holds its session (weir-cni STATUS)",
        Duration::from_secs(30),
        || cni_status(&probe.0, &probe.1),
    )
    .await?;

    env::settle().await;
    println!("weir-cni: {n} ADD+DEL against runner r1's socket …");
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weir-bench",
        "type": "weir-cni",
        "socket": socket,
    })
    .to_string();
    let plugin = weir_cni.clone();
    let weir = tokio::task::spawn_blocking(move || {
        let group = NsGroup::new("en-cni");
        attach::cni_plugin_rounds(n, &group, &plugin, None, &config)
    })
    .await
    .context("weir-cni rounds")?
    .context("weir-cni ADD/DEL")?;
    no_workloads_left(&lab, "after the weir-cni rounds").await?;

    env::settle().await;
    println!("CNI bridge + host-local: {n} ADD+DEL …");
    let cni = tokio::task::spawn_blocking(move || attach::cni_rounds(n))
        .await
        .context("CNI rounds")?
        .context("CNI bridge ADD/DEL")?;

    env::settle().await;
    println!("docker run --rm … true: {m} on Weir's network, {m} on Docker's bridge …");
    let (dir, netns, plugins) = (
        lab.dir.join("docker-r1"),
        lab.ns("r1"),
        lab.docker_plugins(1),
    );
    let dk = tokio::task::spawn_blocking(move || docker_rounds(&docker, &dir, &netns, &plugins, m))
        .await
        .context("docker rounds")?
        .context("docker run")?;
    no_workloads_left(&lab, "after the docker runs").await?;

    let mut r = Report::new("engines", TITLE, opts, run);
    r.text(&format!(
        "One lab (the real `weir host` and one `weir runner` in namespaces, the runner serving Docker's \
         network driver). **(a) CNI.** N = {n} rounds for each plugin (after {WARMUP} untimed rounds), one \
         after another: ADD then DEL executed per the CNI spec (`CNI_COMMAND`, `CNI_CONTAINERID`, \
         `CNI_NETNS`, `CNI_IFNAME=eth0`, the config on stdin, cniVersion 1.0.0), each container a fresh \
         namespace created and deleted outside the timed region; the first ADD's address is checked on \
         the namespace's eth0. **weir-cni**: `target/release/weir-cni` with `socket` = runner r1's local \
         socket (the plugin connects, the runner relays the attach to the host, the host allocates and \
         commits, the runner creates the veth in the namespace and answers). **bridge**: \
         `{CNI_DIR}/bridge` + `host-local` as in the attach section (its bridge in a namespace of its \
         own, MTU 1450, a default route). Both times include starting the plugin process, as a \
         runtime does."
    ));
    let mut t = Table::new(&[
        "operation",
        "weir-cni p50",
        "p95",
        "p99",
        "bridge p50",
        "p95",
        "p99",
        "weir-cni/bridge p50",
        "p95",
        "p99",
    ]);
    for (what, w, c) in latency_rows(&weir, &cni) {
        t.row([
            what.to_string(),
            fmt_dur(w.median()),
            fmt_dur(w.pct(0.95)),
            fmt_dur(w.pct(0.99)),
            fmt_dur(c.median()),
            fmt_dur(c.pct(0.95)),
            fmt_dur(c.pct(0.99)),
            dur_ratio(w.median(), c.median()),
            dur_ratio(w.pct(0.95), c.pct(0.95)),
            dur_ratio(w.pct(0.99), c.pct(0.99)),
        ]);
    }
    r.table(&t);
    r.text(&format!(
        "**(b) Docker.** A private dockerd ({}) in runner r1's namespace with a mount namespace of its \
         own (`--iptables=false --ip-masq=false --ip-forward=false`, its own `docker0` bridge), the \
         runner's driver as the plugin `weir`, the network made with `docker network create -d weir \
         --ipam-driver null weir`. M = {m} pairs (after {DOCKER_WARMUP} untimed pairs) of `docker run \
         --rm --network weir {IMAGE} true` and `docker run --rm --network bridge {IMAGE} true` ({IMAGE}: \
         the busybox-static rootfs, imported), alternating which goes first; each time is the whole CLI \
         command (create, network attach, start, exit, removal, detach). Checked before timing: the \
         container on `weir` has a 10.x address, the one on `bridge` a 172.17.x one; after: no \
         workload left in Weir.",
        dk.versions
    ));
    let mut t = Table::new(&[
        "docker run --rm … true",
        "p50",
        "p95",
        "Weir − bridge p50",
        "Weir/bridge p50",
        "Weir/bridge p95",
    ]);
    t.row([
        "--network weir (Weir's driver)".to_string(),
        fmt_dur(dk.weir.median()),
        fmt_dur(dk.weir.pct(0.95)),
        fmt_signed(dk.weir.median(), dk.bridge.median()),
        dur_ratio(dk.weir.median(), dk.bridge.median()),
        dur_ratio(dk.weir.pct(0.95), dk.bridge.pct(0.95)),
    ]);
    t.row([
        "--network bridge (Docker's own)".to_string(),
        fmt_dur(dk.bridge.median()),
        fmt_dur(dk.bridge.pct(0.95)),
    ]);
    r.table(&t);
    r.text(
        "A ratio below 1× means Weir is faster. weir-cni's ADD includes a round trip over the \
         runner's unix socket and the runner's to the host; the bridge's is local (a lock and a \
         file in host-local's data directory). Docker's bridge network is built into dockerd; \
         Weir's is a remote driver, so each container costs Docker's HTTP calls to it \
         (CreateEndpoint, Join, ProgramExternalConnectivity, and their reverse on removal) on top of Weir's attach and detach.",
    );
    Ok(r)
}

fn latency_rows<'a>(
    w: &'a Latencies,
    c: &'a Latencies,
) -> [(&'static str, &'a Samples, &'a Samples); 3] {
    [
        ("ADD", &w.attach, &c.attach),
        ("DEL", &w.detach, &c.detach),
        ("ADD + DEL", &w.both, &c.both),
    ]
}

/// `a − b`, signed, in the unit that suits it.
fn fmt_signed(a: Duration, b: Duration) -> String {
    if a >= b {
        format!("+{}", fmt_dur(a - b))
    } else {
        format!("−{}", fmt_dur(b - a))
    }
}

/// `weir-cni` STATUS against `socket`: succeeds while the runner holds a session.
fn cni_status(plugin: &Path, socket: &Path) -> bool {
    let conf = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "weir-bench",
        "type": "weir-cni",
        "socket": socket,
    });
    let Ok(mut child) = Command::new(plugin)
        .env("CNI_COMMAND", "STATUS")
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    child.wait().map(|s| s.success()).unwrap_or(false)
}

/// Weir lists no workload within 15 s (a detach is acknowledged once durable).
async fn no_workloads_left(lab: &weir::lab::Lab, when: &str) -> Result<()> {
    let mut ctl = env::control(lab).await?;
    let started = Instant::now();
    loop {
        let left = ctl
            .list_workloads(pb::ListWorkloadsRequest::default())
            .await
            .context("list workloads")?
            .into_inner()
            .workloads;
        if left.is_empty() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(15) {
            let ids: Vec<&str> = left.iter().map(|w| w.workload_id.as_str()).collect();
            bail!(
                "{when}: Weir still lists {} workload(s): {ids:?}",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Docker CLI: Debian's (docker.io, the daemon's version) when installed, else `docker`.
fn docker_cli() -> Result<PathBuf> {
    for tool in ["dockerd", "nsenter", "unshare"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            bail!(
                "{tool} is missing: apt-get install docker.io util-linux (scripts/bootstrap.sh does)"
            );
        }
    }
    let debian = PathBuf::from("/usr/bin/docker");
    Ok(if debian.is_file() {
        debian
    } else {
        PathBuf::from("docker")
    })
}

struct DockerTimes {
    weir: Samples,
    bridge: Samples,
    versions: String,
}

/// `m` timed pairs of `docker run --rm … true`, on Weir's network and on Docker's bridge.
fn docker_rounds(
    cli: &Path,
    dir: &Path,
    netns: &Path,
    plugins: &Path,
    m: usize,
) -> Result<DockerTimes> {
    let d = Dockerd::start(cli, dir, netns, plugins)?;
    d.ok(&[
        "network",
        "create",
        "-d",
        "weir",
        "--ipam-driver",
        "null",
        "weir",
    ])?;
    let versions = d.ok(&[
        "version",
        "--format",
        "dockerd {{.Server.Version}}, CLI {{.Client.Version}}",
    ])?;
    for (network, prefix) in [("weir", " 10."), ("bridge", " 172.17.")] {
        let got = d.ok(&[
            "run",
            "--rm",
            "--network",
            network,
            IMAGE,
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "eth0",
        ])?;
        if !got.contains(prefix) {
            bail!("a container on {network} has no{prefix}x address: {got}");
        }
    }
    let (mut weir, mut bridge) = (Vec::with_capacity(m), Vec::with_capacity(m));
    for i in 0..DOCKER_WARMUP + m {
        let order = if i % 2 == 0 {
            ["weir", "bridge"]
        } else {
            ["bridge", "weir"]
        };
        for network in order {
            let started = Instant::now();
            d.ok(&["run", "--rm", "--network", network, IMAGE, "true"])?;
            let took = started.elapsed();
            if i >= DOCKER_WARMUP {
                match network {
                    "weir" => weir.push(took),
                    _ => bridge.push(took),
                }
            }
        }
    }
    Ok(DockerTimes {
        weir: Samples::new(weir),
        bridge: Samples::new(bridge),
        versions,
    })
}

/// A private dockerd in a namespace of the lab (the runner's) and a mount namespace of its own,
/// as the tests' harness (`core/tests/common/docker.rs`) starts it:
///
/// ```text
/// nsenter --net=NETNS unshare --mount --propagation private sh -c '
///     a fresh tmpfs /run (with /run/weir-lab bound into it); PLUGINS on /run/docker/plugins;
///     a tmpfs /etc/docker; exec dockerd --data-root D/data … --iptables=false
///     --cgroup-parent=/NAME'
/// ```
///
/// Everything Docker writes to global places lands in mounts that vanish with it. Dropping it
/// removes its containers, stops it, kills whatever is left in its cgroups and removes them,
/// its data and the staging directory.
struct Dockerd {
    cli: PathBuf,
    dir: PathBuf,
    child: Child,
    cgroup: String,
}

impl Dockerd {
    fn start(cli: &Path, dir: &Path, netns: &Path, plugins: &Path) -> Result<Dockerd> {
        let cgroup = format!("weir-bench-docker-{}", std::process::id());
        let staging = PathBuf::from(format!("/tmp/{cgroup}"));
        for p in [
            dir.join("data"),
            dir.join("cli"),
            plugins.to_path_buf(),
            staging.clone(),
        ] {
            fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        }
        let d = dir.display();
        let script = format!(
            "set -e\n\
             mount -n -t tmpfs -o mode=0755 weir-docker-run {t}\n\
             mkdir -p {t}/docker/plugins {t}/weir-lab\n\
             mount -n --rbind {lab} {t}/weir-lab\n\
             mount -n --move {t} /run\n\
             mount -n --bind {plugins} /run/docker/plugins\n\
             mount -n -t tmpfs -o mode=0755 weir-docker-etc /etc/docker\n\
             exec dockerd --data-root {d}/data --pidfile {d}/docker.pid -H unix://{d}/docker.sock \
             --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
             --default-runtime runc --cgroup-parent=/{cgroup} >{d}/dockerd.log 2>&1\n",
            lab = weir::lab::LAB_RUN_DIR,
            plugins = plugins.display(),
            t = staging.display(),
        );
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .stdin(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir(&staging);
                return Err(e).context("start dockerd");
            }
        };
        let mut me = Dockerd {
            cli: cli.to_path_buf(),
            dir: dir.to_path_buf(),
            child,
            cgroup,
        };
        let started = Instant::now();
        while !me.docker(&["version"])?.status.success() {
            if let Ok(Some(st)) = me.child.try_wait() {
                bail!("dockerd exited ({st}): {}", me.log_tail());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("dockerd did not answer within 60 s: {}", me.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        me.import_busybox()?;
        Ok(me)
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `docker ARGS…` against this daemon, whatever its status.
    fn docker(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.cli)
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", self.cli.display()))
    }

    /// `docker ARGS…`, which must succeed; its stdout, trimmed.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let o = self.docker(args)?;
        if !o.status.success() {
            bail!(
                "docker {} failed: {}{}\ndockerd's log:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                self.log_tail()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// The busybox-static rootfs as the image [`IMAGE`].
    fn import_busybox(&self) -> Result<()> {
        let rootfs = self.dir.join("rootfs");
        for sub in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
            fs::create_dir_all(rootfs.join(sub))?;
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("busybox-static is not installed (scripts/bootstrap.sh)")?;
        let bin = rootfs.join("bin");
        fs::copy(busybox, bin.join("busybox")).context("copy busybox")?;
        let list = Command::new(bin.join("busybox")).arg("--list").output()?;
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", bin.join(applet))?;
            }
        }
        let tar = self.dir.join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()?;
        if !st.success() {
            bail!("tar of the busybox rootfs failed");
        }
        let tar_s = tar.display().to_string();
        self.ok(&["import", &tar_s, IMAGE])?;
        let _ = fs::remove_file(&tar);
        let _ = fs::remove_dir_all(&rootfs);
        Ok(())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first (their DeleteEndpoint reaches the driver while it runs).
        if let Ok(o) = self.docker(&["ps", "-aq"]) {
            let ids = String::from_utf8_lossy(&o.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        // SAFETY: kill(2) on our own child (the shell exec'd dockerd: the same process).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // What is still in its cgroups (shims, containers) dies; then the cgroups go (v1: one
        // per controller; v2: one).
        let mut cgroups: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
            .map(|r| r.flatten().map(|e| e.path().join(&self.cgroup)).collect())
            .unwrap_or_default();
        cgroups.push(Path::new("/sys/fs/cgroup").join(&self.cgroup));
        cgroups.retain(|c| c.is_dir());
        for _ in 0..100 {
            for c in &cgroups {
                for pid in cgroup_pids(c) {
                    // SAFETY: kill(2); these processes are in this dockerd's cgroup.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGKILL);
                    }
                }
                rmdir_tree(c);
            }
            if cgroups.iter().all(|c| !c.exists()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir(format!("/tmp/{}", self.cgroup));
    }
}

fn cgroup_pids(cg: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for e in fs::read_dir(cg).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(cgroup_pids(&e.path()));
        }
    }
    out
}

fn rmdir_tree(p: &Path) {
    for e in fs::read_dir(p).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            rmdir_tree(&e.path());
        }
    }
    let _ = fs::remove_dir(p);
}
