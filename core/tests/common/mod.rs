//! Shared harness of the namespace integration tests: unique lab names, stale-lab cleanup,
//! waiting on observable conditions, packets.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use weir::dataplane::netlink::Netlink;
use weir::lab::{self, Lab, LabSpec, run_in_namespace};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A lab spec with a name unique to this process and call, after cleaning up labs left by
/// test processes that died.
pub fn spec(tag: &str) -> LabSpec {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the namespace integration tests need root (they build network namespaces)"
    );
    clean_stale_labs();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("t{}x{n}{tag}", std::process::id());
    // `WEIR_TEST_BIN` runs the daemons from another build (a release one, for figures).
    let bin = std::env::var_os("WEIR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_weir")));
    let mut s = LabSpec::new(&name, bin);
    // Short timers keep the tests quick; the logic is the same at production values.
    s.host_keys = "heartbeat_timeout = \"3s\"\n".into();
    s.runner_keys = "heartbeat_interval = \"300ms\"\n".into();
    s.etcd_members = store_members();
    s
}

/// The back end the host's state is on in these tests: `WEIR_TEST_STORE=etcd` (one member in
/// the host's namespace) or `etcd3` (three members) runs the same tests with the host on etcd;
/// unset or `redb`, on redb. `scripts/test.sh` runs the etcd subset this way.
pub fn store_members() -> usize {
    match std::env::var("WEIR_TEST_STORE").as_deref() {
        Ok("etcd") => 1,
        Ok("etcd3") => 3,
        Ok("redb") | Err(_) => 0,
        Ok(other) => panic!("WEIR_TEST_STORE={other:?}: allowed are redb, etcd and etcd3"),
    }
}

/// The example Python scheduler (`examples/python-scheduler`), pointed at the lab's host.
pub fn python_scheduler(lab: &Lab) -> tokio::process::Command {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/python-scheduler/scheduler.py"
    );
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script)
        .args(["--host", &lab.control_url(), "--token-file"])
        .arg(lab.dir.join("control.token"));
    cmd
}

/// A bare namespace of a test's own (no lab), deleted when dropped — on success, failure and
/// panic — and named like a lab member, so a crashed test's is removed by the next run.
pub struct ScratchNs {
    pub name: String,
    pub path: PathBuf,
}

impl ScratchNs {
    pub fn new(tag: &str) -> Self {
        clean_stale_labs();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("weir-t{}x{n}{tag}-ns", std::process::id());
        let path = weir::dataplane::netns::create(&name).unwrap();
        Self { name, path }
    }

    /// Run `program args…` inside; its stdout. Panics (with stderr) when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = weir::dataplane::netns::delete(&self.name);
    }
}

/// Labs whose test process is gone (a crash or SIGKILL skipped their Drop).
fn clean_stale_labs() {
    let Ok(names) = weir::dataplane::netns::list("weir-t") else {
        return;
    };
    for ns in names {
        let Some(lab_name) = ns.strip_prefix("weir-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        let pid: Option<i32> = lab_name
            .strip_prefix('t')
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse().ok());
        if let Some(pid) = pid
            && pid != std::process::id() as i32
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            lab::down(lab_name);
        }
    }
}

/// Poll `cond` every 100 ms until it holds; panic with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A runner's entry in `weir status --json`.
pub fn runner_status(lab: &Lab, name: &str) -> Option<serde_json::Value> {
    let s = lab.status()?;
    s["runners"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
}

pub fn is_active(lab: &Lab, name: &str) -> bool {
    runner_status(lab, name).is_some_and(|r| r["active"] == true && r["connected"] == true)
}

pub fn is_inactive(lab: &Lab, name: &str) -> bool {
    runner_status(lab, name).is_some_and(|r| r["active"] == false)
}

/// The IPv4 address of a workload's eth0.
pub async fn workload_ip(lab: &Lab, runner: u32, w: u32) -> Ipv4Addr {
    lab.address_of(&format!("r{runner}-w{w}"))
        .await
        .unwrap_or_else(|| panic!("r{runner}-w{w} has no address"))
        .addr()
}

/// A continuous 10/s ping from a lab member.
pub struct Pinger(Child);

impl Pinger {
    pub fn start(lab: &Lab, member: &str, to: Ipv4Addr) -> Pinger {
        let mut cmd = Command::new("ping");
        cmd.args(["-i", "0.1", "-W", "1", &to.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        run_in_namespace(&mut cmd, &lab.ns(member)).unwrap();
        Pinger(cmd.spawn().expect("start ping"))
    }

    /// Stop it and return (transmitted, received).
    pub fn stop(self) -> (u32, u32) {
        let child = self.0;
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary in {text}"));
        let nums: Vec<u32> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .take(2)
            .map(|s| s.parse().unwrap())
            .collect();
        (nums[0], nums[1])
    }
}

/// Links of a lab member's namespace: name -> (ifindex, kind).
pub async fn links(lab: &Lab, member: &str) -> Vec<weir::dataplane::netlink::Link> {
    Netlink::in_namespace(&lab.ns(member))
        .unwrap()
        .links()
        .await
        .unwrap()
}

/// Every IPv4 address in a member's namespace, as text.
pub async fn all_addresses(lab: &Lab, member: &str) -> Vec<String> {
    let nl = Netlink::in_namespace(&lab.ns(member)).unwrap();
    let mut out = Vec::new();
    for l in nl.links().await.unwrap() {
        for a in nl.addrs(l.index).await.unwrap() {
            out.push(format!("{} {a}", l.name));
        }
    }
    out
}

/// `nft list ruleset` inside a member's namespace.
pub fn ruleset(lab: &Lab, member: &str) -> String {
    let out = lab.exec(member, "nft", &["list", "ruleset"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip route` inside a member's namespace (for assertions on text).
pub async fn routes(lab: &Lab, member: &str) -> Vec<String> {
    let nl = Netlink::in_namespace(&lab.ns(member)).unwrap();
    nl.routes()
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{} via {:?} proto {}", r.destination, r.gateway, r.protocol))
        .collect()
}

pub fn must(lab_result: Result<Lab, lab::LabError>) -> Lab {
    lab_result.unwrap_or_else(|e| panic!("{e}"))
}

pub fn dur(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub type Control = weir_proto::v1::control_client::ControlClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        weir::api::auth::Bearer,
    >,
>;

/// A `Control` client on the lab's socket presenting `token` (`None`: no credentials).
pub async fn control_as(lab: &Lab, token: Option<&str>) -> Control {
    let ch = weir::api::client::connect(&lab.control_url(), Default::default())
        .await
        .unwrap();
    weir_proto::v1::control_client::ControlClient::with_interceptor(
        ch,
        weir::api::auth::Bearer::new(token).unwrap(),
    )
}

/// A `Control` client on a lab's socket by its URL and token (for tasks that cannot borrow
/// the lab).
pub async fn control_at(url: &str, token: &str) -> Control {
    let ch = weir::api::client::connect(url, Default::default())
        .await
        .unwrap();
    weir_proto::v1::control_client::ControlClient::with_interceptor(
        ch,
        weir::api::auth::Bearer::new(Some(token)).unwrap(),
    )
}

/// An attach of a container namespace on a runner, everything else left to the host.
pub fn attach_req(runner: &str, id: &str, netns: &str) -> weir_proto::v1::AttachWorkloadRequest {
    weir_proto::v1::AttachWorkloadRequest {
        runner: runner.into(),
        workload_id: id.into(),
        netns: netns.into(),
        ..Default::default()
    }
}

/// A `Control` client with the lab's control token.
pub async fn control(lab: &Lab) -> Control {
    control_as(lab, Some(&lab.control_token())).await
}

/// Create a namespace in the lab for a workload that is not attached yet.
pub fn new_netns(lab: &Lab, member: &str) -> String {
    weir::dataplane::netns::create(&lab.ns_name(member)).unwrap();
    lab.ns(member).display().to_string()
}

/// Assert a call was refused with `code`, and return its message.
#[track_caller]
pub fn refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: tonic::Code,
) -> String {
    match r {
        Ok(v) => panic!("expected {code:?}, got success: {v:?}"),
        Err(st) => {
            assert_eq!(st.code(), code, "{}", st.message());
            st.message().to_string()
        }
    }
}

/// A plugin component built by `cd plugins && cargo build --release --target wasm32-wasip2`.
pub fn plugin_path(crate_name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{crate_name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: build the plugins first (cd plugins && cargo build --release --target wasm32-wasip2; ./scripts/test.sh does it)",
        p.display()
    );
    p.canonicalize().unwrap()
}

/// A `[[policy.plugins]]` entry.
pub fn plugin_toml(
    name: &str,
    path: &std::path::Path,
    hooks: &str,
    on_error: &str,
    extra: &str,
) -> String {
    format!(
        "[[policy.plugins]]\nname = \"{name}\"\npath = \"{}\"\nhooks = [\"{hooks}\"]\non_error = \"{on_error}\"\n{extra}\n",
        path.display()
    )
}

/// Events of a kind seen so far (replayed from the start).
pub async fn events_of(lab: &Lab, kind: weir_proto::v1::EventKind) -> Vec<weir_proto::v1::Event> {
    let mut c = control(lab).await;
    let mut s = c
        .watch_events(weir_proto::v1::WatchEventsRequest {
            after: 0,
            only_new: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    // The replay is everything retained; stop at the first quiet moment after it.
    while let Ok(Some(Ok(e))) =
        tokio::time::timeout(std::time::Duration::from_millis(300), s.next()).await
    {
        if e.kind == kind as i32 {
            out.push(e);
        }
    }
    out
}

/// Connect over TCP from lab member `from` to `ip` (bound inside member `to`); the source
/// address `to` saw, or `None` when the connection failed.
pub fn tcp_source(lab: &Lab, from: &str, to: &str, ip: Ipv4Addr) -> Option<Ipv4Addr> {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let listener = weir::dataplane::netns::run_in(&lab.ns(to), move || TcpListener::bind((ip, 0)))
        .ok()?
        .ok()?;
    let target = listener.local_addr().ok()?;
    let connected = weir::dataplane::netns::run_in(&lab.ns(from), move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(3))
    });
    let _stream = connected.ok()?.ok()?;
    match listener.accept().ok()?.1 {
        SocketAddr::V4(v4) => Some(*v4.ip()),
        SocketAddr::V6(_) => None,
    }
}

/// Every workload the host lists (one page).
pub async fn listed(lab: &Lab) -> Vec<weir_proto::v1::Workload> {
    control(lab)
        .await
        .list_workloads(weir_proto::v1::ListWorkloadsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workloads
}

// ---- what the container-engine harnesses (common/{podman,containerd,docker}.rs) share ----

/// An exploded busybox-static rootfs at `rootfs` (`bin/busybox` and a symlink per applet; `etc`,
/// `proc`, `sys`, `dev`, `tmp`): the image every engine test runs.
pub fn busybox_rootfs(rootfs: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox-static is not installed (scripts/bootstrap.sh)");
    let bin = rootfs.join("bin");
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let list = Command::new(bin.join("busybox"))
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
}

/// Every process in the cgroup `cg` and its child cgroups.
pub fn cgroup_pids(cg: &std::path::Path) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(s) = std::fs::read_to_string(cg.join("cgroup.procs")) {
        out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(cgroup_pids(&e.path()));
            }
        }
    }
    out
}

/// Remove a cgroup directory and its child cgroups (rmdir only; a cgroup's files go with it).
pub fn rmdir_tree(p: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

/// A path field of `/proc/self/mountinfo` with its octal escapes (`\040` …) undone.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Run `c` (stdin and stdout piped here) with `input` as JSON on its stdin: its exit code, its
/// stdout as JSON (`Null` when empty) and its stderr (if the caller piped it) — how CNI and
/// netavark plugins are driven.
pub fn run_with_json(
    c: &mut Command,
    input: &serde_json::Value,
) -> (Option<i32>, serde_json::Value, String) {
    use std::io::Write;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let out = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (
        o.status.code(),
        out,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A detach is acknowledged once durable; the runner removes the interface right after: wait
/// (15 s at most) until `member` has no `eth0`.
pub async fn no_interface_left(lab: &Lab, member: &str) {
    for _ in 0..150 {
        if !links(lab, member).await.iter().any(|l| l.name == "eth0") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{member} still has eth0 15 s after its detach");
}

/// `weir doctor` (Diagnose) finds nothing: the store and every runner's kernel agree.
pub async fn doctor_clean(lab: &Lab) {
    let f = control(lab)
        .await
        .diagnose(weir_proto::v1::DiagnoseRequest::default())
        .await
        .unwrap()
        .into_inner()
        .findings;
    assert!(f.is_empty(), "weir doctor finds: {f:?}");
}

/// A directory removed when the test ends, passed or not.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `weir certs ARGS`, which must succeed.
pub fn certs(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("certs")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weir certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
