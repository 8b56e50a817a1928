//! deploy/: the systemd protocol of the units (`READY=1`, then `WATCHDOG=1` every half
//! `WATCHDOG_USEC`, from real daemons in a lab, to a `NOTIFY_SOCKET` of the test's own), the
//! units themselves (`systemd-analyze verify` and `security`), the sample configurations, the
//! Debian package (built with cargo-deb, installed into a scratch root and upgraded over a
//! state directory) and the Prometheus files (promtool).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use weir::lab::{Lab, run_in_namespace};

fn weir_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("core/ has a parent")
        .to_path_buf()
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}",
        o.status,
        text(&o)
    );
    o
}

// --- The notify protocol ---------------------------------------------------------------------

/// A daemon started the way systemd starts a `Type=notify` unit with `WatchdogSec=`: its own
/// `NOTIFY_SOCKET` (bound here) and `WATCHDOG_USEC`.
struct Supervised {
    child: Child,
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl Supervised {
    fn start(lab: &Lab, member: &str, role: &str, cfg: &Path, env: &[(&str, String)]) -> Self {
        let path = lab.dir.join(format!("supervisor-{member}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
        let log = std::fs::File::create(lab.dir.join(format!("supervised-{member}.log"))).unwrap();
        let mut cmd = Command::new(weir_bin());
        cmd.arg("--config")
            .arg(cfg)
            .arg(role)
            .env("NOTIFY_SOCKET", &path)
            .env("WEIR_LOG", "info")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        run_in_namespace(&mut cmd, &lab.ns(member)).unwrap();
        // SAFETY: prctl is async-signal-safe; the daemon dies with the test process.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        Supervised {
            child,
            socket,
            path,
        }
    }

    /// The next notification within `timeout`, with when it arrived.
    async fn next(&self, timeout: Duration) -> Option<(Instant, String)> {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(timeout, self.socket.recv(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some((
            Instant::now(),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        ))
    }

    /// Wait for `READY=1` (and its `STATUS=`); the notifications before it are returned.
    async fn ready(&self, timeout: Duration) -> (String, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((_, msg)) = self.next(left).await else {
                panic!("no READY=1 within {timeout:?}; got {before:?}");
            };
            if msg.lines().any(|l| l == "READY=1") {
                return (msg, before);
            }
            before.push(msg);
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let _ = std::fs::remove_file(&self.path);
        status
    }
}

/// After `READY=1`, `count` notifications that are all `WATCHDOG=1`, each within the
/// supervisor's timeout of the one before (systemd kills the unit otherwise).
async fn assert_watchdog(d: &Supervised, who: &str, timeout: Duration, count: usize) {
    let mut last = Instant::now();
    for i in 0..count {
        let Some((at, msg)) = d.next(timeout).await else {
            panic!("{who}: no WATCHDOG=1 within the watchdog timeout {timeout:?} (ping {i})");
        };
        assert_eq!(msg, "WATCHDOG=1", "{who}: ping {i}");
        assert!(
            at - last < timeout,
            "{who}: ping {i} came {:?} after the last, past the watchdog timeout {timeout:?}",
            at - last
        );
        last = at;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn daemons_tell_systemd_ready_then_feed_the_watchdog() {
    let mut spec = common::spec("wd");
    spec.runners = 1;
    spec.workloads_per_runner = 0;
    let mut lab = common::must(Lab::up(spec).await);
    let timeout = Duration::from_secs(2);
    let usec = timeout.as_micros().to_string();
    let watchdog = [("WATCHDOG_USEC", usec.clone())];

    // The host, restarted under our supervision (its state is kept).
    lab.host.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    let host_cfg = lab.dir.join("host.toml");
    let host = Supervised::start(&lab, "host", "host", &host_cfg, &watchdog);
    let (ready, _) = host.ready(Duration::from_secs(30)).await;
    assert!(ready.contains("STATUS=host ready"), "{ready:?}");
    assert_watchdog(&host, "host", timeout, 3).await;

    // The runner, restarted the same way: ready once registered with that host.
    lab.runners
        .get_mut(&1)
        .unwrap()
        .stop(libc::SIGTERM)
        .unwrap();
    let runner_cfg = lab.dir.join("r1.toml");
    let runner = Supervised::start(&lab, "r1", "runner", &runner_cfg, &watchdog);
    let (ready, _) = runner.ready(Duration::from_secs(30)).await;
    assert!(
        ready.contains("STATUS=runner r1 registered as id 1"),
        "{ready:?}"
    );
    assert_watchdog(&runner, "runner", timeout, 3).await;

    // SIGTERM: STOPPING=1, then a clean exit.
    let mut stopping = false;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(runner.child.id() as i32, libc::SIGTERM) };
    while let Some((_, msg)) = runner.next(Duration::from_secs(10)).await {
        if msg == "STOPPING=1" {
            stopping = true;
            break;
        }
        assert_eq!(msg, "WATCHDOG=1");
    }
    assert!(stopping, "the runner sent no STOPPING=1 on SIGTERM");
    assert!(runner.terminate().success());

    // A watchdog meant for another process (WATCHDOG_PID is not ours) is not fed; the
    // daemon is still ready.
    let other = [("WATCHDOG_USEC", usec), ("WATCHDOG_PID", "1".to_string())];
    let runner = Supervised::start(&lab, "r1", "runner", &runner_cfg, &other);
    let (_, before) = runner.ready(Duration::from_secs(30)).await;
    assert!(
        before.is_empty(),
        "notifications before READY=1: {before:?}"
    );
    assert_eq!(
        runner.next(timeout * 2).await.map(|(_, m)| m),
        None,
        "a WATCHDOG_PID of another process must not be fed"
    );
    assert!(runner.terminate().success());
    assert!(host.terminate().success());
}

// --- The units -------------------------------------------------------------------------------

const UNITS: [&str; 2] = ["weir-host.service", "weir-runner.service"];

/// `systemd-analyze security --offline=yes` rates each unit at most 5.0 ("OK"; systemd's own
/// scale runs from 0, locked down, to 10, unprotected).
#[test]
fn units_are_rated_at_most_5_by_systemd_analyze_security() {
    for unit in UNITS {
        let path = deploy("systemd").join(unit);
        let o = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=50"])
            .arg(&path));
        let out = text(&o);
        let line = out
            .lines()
            .find(|l| l.contains("Overall exposure level for"))
            .unwrap_or_else(|| panic!("no overall rating for {unit}:\n{out}"));
        let level: f64 = line
            .split(": ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the rating in {line:?}"));
        println!("{unit}: {level}");
        assert!(level <= 5.0, "{unit} is rated {level}:\n{out}");
    }
}

/// `systemd-analyze verify` of the units as installed in `root` (systemd's own units copied
/// beside them, as any Debian system has): silent, so no unknown or misspelt directive, no
/// missing dependency, and `ExecStart=` names the package's binary.
fn verify_units(root: &Path) {
    let system = root.join("usr/lib/systemd/system");
    run(Command::new("cp")
        .args(["-a", "--no-clobber", "/usr/lib/systemd/system/."])
        .arg(&system));
    let o = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("--man=no")
        .args(UNITS));
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "systemd-analyze verify complained:\n{}",
        text(&o)
    );
}

/// The capabilities a unit grants (`CapabilityBoundingSet=`), as setpriv's
/// `-all,+net_admin,…`.
fn unit_capabilities(unit: &str) -> String {
    let text = std::fs::read_to_string(deploy("systemd").join(unit)).unwrap();
    let caps: Vec<String> = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap_or_else(|| panic!("{unit} sets no CapabilityBoundingSet="))
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert_eq!(
        text.lines()
            .find_map(|l| l.strip_prefix("AmbientCapabilities=")),
        text.lines()
            .find_map(|l| l.strip_prefix("CapabilityBoundingSet=")),
        "{unit}: the ambient set should be the bounding set"
    );
    format!("-all,{}", caps.join(","))
}

/// The units' capabilities are enough: a lab whose host and runners run with exactly the
/// capabilities their units grant (and no_new_privs) attaches workloads (veth into their
/// namespaces, setns, the gratuitous ARP) that reach each other across runners, and
/// `weir doctor` finds the kernels as recorded.
#[tokio::test(flavor = "multi_thread")]
async fn daemons_work_with_only_the_units_capabilities() {
    let scratch = Scratch::new("caps");
    let wrapper = scratch.0.join("weir");
    let bin = weir_bin();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             case \" $* \" in\n\
             *' host '*) exec setpriv --no-new-privs --bounding-set={host} -- {bin} \"$@\" ;;\n\
             *' runner '*) exec setpriv --no-new-privs --bounding-set={runner} -- {bin} \"$@\" ;;\n\
             *) exec {bin} \"$@\" ;;\n\
             esac\n",
            host = unit_capabilities("weir-host.service"),
            runner = unit_capabilities("weir-runner.service"),
            bin = bin.display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = common::spec("caps");
    spec.weir_bin = wrapper;
    spec.workloads_per_runner = 1;
    let lab = common::must(Lab::up(spec).await);
    // The daemons really run with the reduced sets.
    for pid in [lab.host.as_ref().unwrap().pid, lab.runners[&1].pid] {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let bounding = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert!(
            bounding.count_ones() <= 4,
            "pid {pid} has bounding set {bounding:#x}"
        );
    }
    let to = common::workload_ip(&lab, 2, 1).await;
    assert!(lab.ping("r1-w1", to), "r1-w1 cannot reach r2-w1 ({to})");
    // A workload named by its process (`/proc/<pid>/ns/net`), a process with every capability
    // (as a container's often has some the runner lacks): the ptrace access check wants
    // CAP_SYS_PTRACE.
    let ns = common::new_netns(&lab, "r1-p1");
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &lab.ns_name("r1-p1"), "sleep", "60"])
        .spawn()
        .unwrap();
    common::wait_until(
        "the process is in its namespace",
        Duration::from_secs(10),
        || {
            std::fs::read_link(format!("/proc/{}/ns/net", sleeper.id()))
                .ok()
                .zip(std::fs::metadata(&ns).ok())
                .is_some_and(|(link, meta)| {
                    use std::os::unix::fs::MetadataExt;
                    link.to_string_lossy() == format!("net:[{}]", meta.ino())
                })
        },
    )
    .await;
    let o = lab
        .weir(&[
            "attach",
            "--runner",
            "r1",
            "--id",
            "r1-p1",
            "--pid",
            &sleeper.id().to_string(),
            "--json",
        ])
        .unwrap();
    let attached = o.status.success();
    if attached {
        common::doctor_clean(&lab).await;
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(attached, "attach --pid: {}", text(&o));
}

// --- The sample configurations ---------------------------------------------------------------

/// `weir config show` loads each sample (every key must exist in the schema, every value
/// parse and pass the checks), and the TLS settings are the ones in effect.
#[test]
fn sample_configs_load() {
    for (file, expect) in [
        (
            "host.toml",
            &[
                "tls_cert = \"/etc/weir/tls/host.crt\"",
                "tls_key = \"/etc/weir/tls/host.key\"",
                "tls_client_ca = \"/etc/weir/tls/ca.crt\"",
                "reachable_address = \"192.0.2.1\"",
                "control_token_files = [\"/etc/weir/control.token\"]",
            ][..],
        ),
        (
            "runner.toml",
            &[
                "host = \"https://192.0.2.1:7700\"",
                "tls_ca = \"/etc/weir/tls/ca.crt\"",
                "tls_cert = \"/etc/weir/tls/runner.crt\"",
                "tls_key = \"/etc/weir/tls/runner.key\"",
                "prometheus_listen = \"127.0.0.1:9465\"",
            ][..],
        ),
        (
            "host-a.toml",
            &[
                "name = \"host-a\"",
                "url = \"https://192.0.2.1:7700\"",
                "reachable_address = \"192.0.2.1\"",
                "backend = \"etcd\"",
            ][..],
        ),
        (
            "host-b.toml",
            &[
                "name = \"host-b\"",
                "url = \"https://192.0.2.2:7700\"",
                "reachable_address = \"192.0.2.2\"",
                "backend = \"etcd\"",
            ][..],
        ),
        (
            "runner-ha.toml",
            &["hosts = [\"https://192.0.2.1:7700\", \"https://192.0.2.2:7700\"]"][..],
        ),
    ] {
        let path = deploy("config").join(file);
        let o = run(Command::new(weir_bin())
            .arg("--config")
            .arg(&path)
            .args(["config", "show"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default()));
        let shown = String::from_utf8_lossy(&o.stdout);
        for line in expect {
            assert!(
                shown.lines().any(|l| l == *line),
                "{file}: {line:?} not in effect:\n{shown}"
            );
        }
    }
}

// --- The Debian package ----------------------------------------------------------------------

/// A directory removed when dropped (success, failure or panic).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("weir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Build the package at `version` from the debug build (no release build: `--no-build
/// --profile dev`) into `out`; its path.
fn build_deb(version: &str, out: &Path) -> PathBuf {
    let o = run(Command::new("cargo")
        .current_dir(repo())
        .args([
            "deb",
            "-p",
            "weir",
            "--no-build",
            "--profile",
            "dev",
            "--fast",
        ])
        .args(["--deb-version", version, "--output"])
        .arg(out));
    let path = String::from_utf8_lossy(&o.stdout)
        .lines()
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("cargo deb named no .deb:\n{}", text(&o)));
    assert!(path.is_file(), "{} missing", path.display());
    path
}

/// A root with an empty dpkg database and a shell for the maintainer scripts (which dpkg runs
/// chrooted into it); nothing of the machine's own system is touched.
fn scratch_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    std::fs::write(admin.join("available"), "").unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/sh")).expect("busybox-static (bootstrap.sh)");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    nix::sys::stat::mknod(
        &root.join("dev/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    root
}

/// `dpkg --root` (the dependencies — libc6, nftables — are not in the scratch root).
fn dpkg(root: &Path, args: &[&str]) -> Output {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("--force-depends")
        .args(args))
}

fn installed_version(root: &Path) -> String {
    let o = run(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Version} ${Status}", "weir"]));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn debian_package_installs_and_upgrades_over_the_state_directory() {
    assert!(
        Command::new("cargo")
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: scripts/bootstrap.sh installs it (scripts/bootstrap.d/deb.sh)"
    );
    let scratch = Scratch::new("deb");
    // Completions and man pages, generated from the binary the package ships.
    let staging = repo().join("target/deb-staging");
    run(Command::new(deploy("deb/stage.sh"))
        .arg(weir_bin())
        .arg(&staging));
    let first = build_deb("0.0.1-1", &scratch.0.join("v1"));
    let second = build_deb("0.0.2-1", &scratch.0.join("v2"));

    let root = scratch_root(&scratch.0);
    dpkg(&root, &["-i", first.to_str().unwrap()]);
    assert_eq!(installed_version(&root), "0.0.1-1 install ok installed");
    let o = run(Command::new(root.join("usr/bin/weir")).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
    for f in [
        "usr/lib/systemd/system/weir-host.service",
        "usr/lib/systemd/system/weir-runner.service",
        "usr/share/doc/weir/examples/host.toml",
        "usr/share/doc/weir/examples/runner.toml",
        "usr/share/bash-completion/completions/weir",
        "usr/share/zsh/vendor-completions/_weir",
        "usr/share/fish/vendor_completions.d/weir.fish",
        "usr/share/man/man1/weir.1.gz",
        "usr/share/man/man1/weir-host.1.gz",
        "usr/lib/modules-load.d/weir.conf",
        "usr/lib/cni/weir-cni",
        "usr/libexec/netavark/weir-netavark",
        "usr/share/doc/weir/examples/cni/weir.conflist",
    ] {
        assert!(root.join(f).is_file(), "the package installed no {f}");
    }
    // Nothing in /etc: the operator writes /etc/weir/weir.toml from the examples.
    assert!(!root.join("etc/weir").exists());
    // The units as installed, against the installed binary.
    verify_units(&root);

    // State written by a daemon of the first version survives the upgrade, removal and purge.
    let state = root.join("var/lib/weir/host");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("weir.redb"), b"allocations").unwrap();
    dpkg(&root, &["-i", second.to_str().unwrap()]);
    assert_eq!(installed_version(&root), "0.0.2-1 install ok installed");
    assert_eq!(
        std::fs::read(state.join("weir.redb")).unwrap(),
        b"allocations"
    );
    run(Command::new(root.join("usr/bin/weir")).arg("--version"));
    dpkg(&root, &["--purge", "weir"]);
    assert!(!root.join("usr/bin/weir").exists());
    assert_eq!(
        std::fs::read(state.join("weir.redb")).unwrap(),
        b"allocations"
    );
}

// --- Prometheus ------------------------------------------------------------------------------

/// Where scripts/bootstrap.d installs Debian's promtool (extracted, no service).
const PROMTOOL: &str = "/var/cache/weir/prometheus/usr/bin/promtool";

fn promtool() -> PathBuf {
    let p = std::env::var_os("WEIR_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PROMTOOL));
    assert!(
        p.is_file(),
        "{} missing: scripts/bootstrap.sh installs it",
        p.display()
    );
    p
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    let dir = deploy("prometheus");
    run(Command::new(promtool())
        .current_dir(&dir)
        .args(["check", "config", "prometheus.yml"]));
    run(Command::new(promtool())
        .current_dir(&dir)
        .args(["check", "rules", "weir-alerts.yml"]));
    run(Command::new(promtool())
        .current_dir(&dir)
        .args(["test", "rules", "weir-alerts.test.yml"]));
}

/// Every `weir_*` series the alert rules use is one Weir exports: an instrument of
/// core/src/telemetry/metrics.rs under its Prometheus name (histograms as `_bucket`/`_count`/
/// `_sum`, counters with `_total`, gauges as they are).
#[test]
fn alert_rules_use_real_metric_names() {
    let src = std::fs::read_to_string(repo().join("core/src/telemetry/metrics.rs")).unwrap();
    let mut exported = Vec::new();
    for (i, _) in src.match_indices("\"weir.") {
        let rest = &src[i + 1..];
        let name = &rest[..rest.find('"').unwrap()];
        let prom = name.replace('.', "_");
        let head = src[..i].trim_end();
        if head.ends_with("counter(") {
            exported.push(format!("{prom}_total"));
        } else if head.ends_with("gauge(") {
            exported.push(prom);
        } else {
            // latency(&m, "weir.x.duration", …): seconds histograms.
            for s in ["bucket", "count", "sum"] {
                exported.push(format!("{prom}_seconds_{s}"));
            }
        }
    }
    assert!(
        exported.iter().any(|n| n == "weir_runners")
            && exported.iter().any(|n| n == "weir_policy_faults_total")
            && exported
                .iter()
                .any(|n| n == "weir_attach_duration_seconds_count"),
        "could not read the instruments of metrics.rs: {exported:?}"
    );
    let rules = std::fs::read_to_string(deploy("prometheus/weir-alerts.yml")).unwrap();
    let mut used: Vec<&str> = rules
        .match_indices("weir_")
        .map(|(i, _)| {
            let rest = &rules[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 6, "{used:?}");
    for name in used {
        assert!(
            exported.iter().any(|e| e == name),
            "weir-alerts.yml uses {name}, which Weir does not export ({exported:?})"
        );
    }
}
