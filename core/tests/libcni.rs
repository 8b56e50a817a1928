//! `weir-cni` driven by libcni itself (Debian's golang-github-appc-cni-dev 1.1.2, through
//! `core/tests/cnitool`, built offline), in a conflist with the reference plugins chained after
//! it (tuning, bandwidth, portmap from Debian's containernetworking-plugins 1.1.1), run inside
//! runner r1's namespace of a lab: ADD gives the address and each chained plugin leaves its
//! mark in the kernel (so each got weir-cni's result as prevResult), CHECK passes and fails once
//! the interface is gone, DEL removes everything and DEL again is fine.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use weir::dataplane::netns;
use weir::lab::{Lab, run_in_namespace, runner_ip};

const NET: &str = "weirlib";
const HOST_PORT: u16 = 18080;
const CONTAINER_PORT: u16 = 80;
const TUNED_MTU: u32 = 1360;
/// A sysctl tuning sets inside the container (default 0).
const SYSCTL: &str = "net.ipv4.conf.eth0.arp_notify";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Build `core/tests/cnitool` (GOPATH mode, Debian's libcni; the Go cache under target/ so
/// later runs reuse it).
fn cnitool() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_BIN_EXE_weir"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("libcni");
    std::fs::create_dir_all(&target).unwrap();
    let out = target.join(format!("cnitool-{}", std::process::id()));
    let o = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("./core/tests/cnitool")
        .current_dir(repo())
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!("{}:/usr/share/gocode", target.join("gopath").display()),
        )
        .env("GOCACHE", target.join("gocache"))
        .output()
        .unwrap_or_else(|e| panic!("go: {e} (install golang-go: scripts/bootstrap.sh)"));
    assert!(
        o.status.success(),
        "building cnitool failed (scripts/bootstrap.sh installs golang-go and golang-github-appc-cni-dev): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The built tool, removed when dropped (a copy per test process).
struct Tool {
    bin: PathBuf,
    confdir: PathBuf,
    cache: PathBuf,
    cni_path: String,
    /// The plugins' PATH: a directory with `iptables` only (see `tool_path`).
    path: PathBuf,
    ns: PathBuf,
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.bin);
    }
}

impl Tool {
    fn run(&self, cmd: &str, netns: &str, id: &str) -> Output {
        let caps = json!({"portMappings": [
            {"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp"},
        ]});
        let mut c = Command::new(&self.bin);
        c.args([cmd, NET, netns])
            .env_clear()
            .env("PATH", &self.path)
            .env("NETCONFPATH", &self.confdir)
            .env("CNI_PATH", &self.cni_path)
            .env("CNI_CACHE_DIR", &self.cache)
            .env("CNI_CONTAINERID", id)
            .env("CAP_ARGS", caps.to_string())
            .stdin(Stdio::null());
        run_in_namespace(&mut c, &self.ns).unwrap();
        c.output().unwrap()
    }

    #[track_caller]
    fn ok(&self, cmd: &str, netns: &str, id: &str) -> String {
        let o = self.run(cmd, netns, id);
        assert!(
            o.status.success(),
            "cnitool {cmd} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// The plugins' PATH: only `iptables` (portmap's tool). portmap 1.1.1's CHECK also looks for
/// IPv6 rules whenever `ip6tables` works, and fails for an IPv4-only container
/// (containernetworking/plugins#819); without `ip6tables` it checks IPv4 only, as it adds.
fn tool_path(lab: &Lab) -> PathBuf {
    let dir = lab.dir.join("cni-bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink("/usr/sbin/iptables", dir.join("iptables")).unwrap();
    dir
}

fn conflist(lab: &Lab) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "plugins": [
            {"type": "weir-cni", "socket": lab.dir.join("r1.sock")},
            {"type": "tuning", "mtu": TUNED_MTU, "sysctl": {SYSCTL: "1"},
             "dataDir": lab.dir.join("tuning")},
            {"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 65536,
             "egressRate": 8_000_000, "egressBurst": 65536},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    })
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The marks the chained plugins leave, as seen in the kernel.
struct Marks {
    /// tuning: eth0's MTU and the sysctl inside the container.
    mtu: Option<u32>,
    sysctl: Option<String>,
    /// bandwidth: a tbf qdisc on the runner's end, and its ifb device.
    tbf_on_host_end: bool,
    ifb: Vec<String>,
    /// portmap: its DNAT to the container in the runner's nat table.
    dnat: bool,
}

async fn marks(lab: &Lab, member: &str, host_end: &str, ip: Ipv4Addr) -> Marks {
    let inside = links(lab, member).await;
    let mtu = inside.iter().find(|l| l.name == "eth0").map(|l| l.mtu);
    let path = format!("/proc/sys/{}", SYSCTL.replace('.', "/"));
    let sysctl = lab
        .exec(member, "cat", &[&path])
        .ok()
        .filter(|o| o.status.success())
        .map(|o| text(&o).trim().to_string());
    let tbf_on_host_end = lab
        .exec("r1", "tc", &["qdisc", "show", "dev", host_end])
        .map(|o| text(&o).contains("tbf"))
        .unwrap_or(false);
    let ifb = links(lab, "r1")
        .await
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("ifb"))
        .map(|l| l.name)
        .collect();
    let nat = lab.exec("r1", "iptables", &["-t", "nat", "-S"]).unwrap();
    let dnat = text(&nat).contains(&format!("--to-destination {ip}:{CONTAINER_PORT}"));
    Marks {
        mtu,
        sysctl,
        tbf_on_host_end,
        ifb,
        dnat,
    }
}

/// Connect from the host's namespace to r1's underlay address on the published port; whether
/// the connection arrived at a listener inside the container.
fn published_port_reaches(lab: &Lab, member: &str) -> bool {
    let listener = netns::run_in(&lab.ns(member), || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, CONTAINER_PORT))
    })
    .unwrap()
    .unwrap();
    let to = SocketAddr::from((runner_ip(1), HOST_PORT));
    let connected = netns::run_in(&lab.ns("host"), move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })
    .unwrap();
    match connected {
        Ok(_stream) => listener.accept().is_ok(),
        Err(_) => false,
    }
}

/// A detach is acknowledged once durable; the runner removes the interface right after.
async fn gone_from_kernel(lab: &Lab, member: &str, host_end: &str) {
    for _ in 0..150 {
        let inside = links(lab, member).await.iter().any(|l| l.name == "eth0");
        let outside = links(lab, "r1").await.iter().any(|l| l.name == host_end);
        if !inside && !outside {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{member}'s eth0 or {host_end} is still there 15 s after DEL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcni_add_check_del_twice_with_chained_reference_plugins() {
    let mut spec = spec("lcni");
    spec.runners = 1;
    spec.workloads_per_runner = 0;
    let lab = must(Lab::up(spec).await);
    let confdir = lab.dir.join("net.d");
    std::fs::create_dir_all(&confdir).unwrap();
    std::fs::write(
        confdir.join("10-weirlib.conflist"),
        conflist(&lab).to_string(),
    )
    .unwrap();
    let weir_cni_dir = PathBuf::from(env!("CARGO_BIN_EXE_weir"))
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        weir_cni_dir.join("weir-cni").is_file(),
        "weir-cni is missing beside weir: build the workspace (cargo build --workspace --bins)"
    );
    let tool = Tool {
        bin: cnitool(),
        confdir,
        cache: lab.dir.join("cni-cache"),
        cni_path: format!("{}:/usr/lib/cni", weir_cni_dir.display()),
        path: tool_path(&lab),
        ns: lab.ns("r1"),
    };

    // ADD: weir-cni's address, and every chained plugin acted on that result.
    let c1 = new_netns(&lab, "c1");
    let id1 = "libcni-ctr1";
    let result: Value = serde_json::from_str(&tool.ok("add", &c1, id1)).unwrap();
    assert_eq!(result["cniVersion"], "1.0.0", "{result}");
    let ip: Ipv4Addr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"));
    let host_end = result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(result["interfaces"][0]["sandbox"].is_null(), "{result}");
    assert_eq!(result["interfaces"][1]["sandbox"], c1.as_str(), "{result}");
    let w = listed(&lab).await;
    let rec = w.iter().find(|w| w.workload_id == id1).unwrap();
    assert_eq!(rec.origin, format!("cni/{NET}"));
    assert_eq!(rec.ip.split('/').next(), Some(ip.to_string().as_str()));
    assert_eq!(lab.address_of("c1").await.map(|a| a.addr()), Some(ip));
    let m = marks(&lab, "c1", &host_end, ip).await;
    assert_eq!(m.mtu, Some(TUNED_MTU), "tuning set eth0's MTU");
    assert_eq!(m.sysctl.as_deref(), Some("1"), "tuning set {SYSCTL}");
    assert!(m.tbf_on_host_end, "bandwidth shapes {host_end} (ingress)");
    assert_eq!(
        m.ifb.len(),
        1,
        "bandwidth made one ifb (egress): {:?}",
        m.ifb
    );
    assert!(m.dnat, "portmap DNATs to {ip}:{CONTAINER_PORT}");
    assert!(
        published_port_reaches(&lab, "c1"),
        "r1:{HOST_PORT} reaches the container through portmap"
    );

    // CHECK: every plugin of the chain agrees.
    tool.ok("check", &c1, id1);

    // DEL removes it all; DEL again is fine.
    tool.ok("del", &c1, id1);
    assert!(listed(&lab).await.is_empty());
    gone_from_kernel(&lab, "c1", &host_end).await;
    let m = marks(&lab, "c1", &host_end, ip).await;
    assert!(m.ifb.is_empty(), "bandwidth's ifb is left: {:?}", m.ifb);
    assert!(!m.dnat, "portmap's DNAT is left");
    tool.ok("del", &c1, id1);

    // CHECK fails once the interface is gone (deleted by hand inside the namespace); DEL then
    // cleans up, twice.
    let c2 = new_netns(&lab, "c2");
    let id2 = "libcni-ctr2";
    let r2: Value = serde_json::from_str(&tool.ok("add", &c2, id2)).unwrap();
    let host_end2 = r2["interfaces"][0]["name"].as_str().unwrap().to_string();
    tool.ok("check", &c2, id2);
    let o = lab.exec("c2", "ip", &["link", "del", "eth0"]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = tool.run("check", &c2, id2);
    assert!(
        !o.status.success(),
        "CHECK passed without the container's interface"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("interface-missing"), "{err}");
    tool.ok("del", &c2, id2);
    tool.ok("del", &c2, id2);
    assert!(listed(&lab).await.is_empty());
    gone_from_kernel(&lab, "c2", &host_end2).await;
    let ip2: Ipv4Addr = r2["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap();
    let m = marks(&lab, "c2", &host_end2, ip2).await;
    assert!(
        m.ifb.is_empty() && !m.dnat,
        "DEL left ifb {:?} or DNAT",
        m.ifb
    );
    // libcni's cache holds no result any more.
    let cached = std::fs::read_dir(lab.dir.join("cni-cache").join("results"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(cached, 0, "libcni still caches a result");
}
