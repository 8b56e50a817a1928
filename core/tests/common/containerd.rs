//! containerd 1.6 with its CRI plugin (the path kubelet uses), run inside a network namespace of
//! the test's own with all of its state in one private directory: for tests that drive a CNI
//! plugin (`weir-cni`) the way Kubernetes does, through `RunPodSandbox` and friends
//! ([`Containerd::runtime`] is a `runtime.v1.RuntimeService` client from the `k8s-cri` crate).
//!
//! Verified on Debian 12 (containerd 1.6.20~ds1, containerd-shim-runc-v2, runc 1.1.5,
//! containernetworking-plugins 1.1.1, busybox-static 1.35, cgroup v1 with a v2 `unified`
//! hierarchy): first by hand with a `bridge` + `host-local` conflist, then by
//! `core/tests/containerd.rs` with `weir-cni`. The daemon is
//!
//! ```text
//! env -i PATH=... TMPDIR=D/tmp HOME=D/home nsenter --net=NETNS containerd --config D/config.toml
//! ```
//!
//! and the config (version 2) sets, each for a reason:
//! - `root`, `state`, `temp`: D/root, D/state, D/tmp (else /var/lib/containerd, /run/containerd
//!   and the system's temporary directory); `grpc.address` D/containerd.sock, `ttrpc.address`
//!   beside it (else /run/containerd/containerd.sock); no debug or metrics listener.
//! - `disabled_plugins`: the aufs, btrfs, zfs and devmapper snapshotters, `opt` (it would make
//!   /opt/containerd), the tracing processor. The v1 runtime `io.containerd.runtime.v1.linux`
//!   must stay: without it tasks-service, and with it the CRI plugin, fail to load ("no plugins
//!   registered for io.containerd.runtime.v1"); its `runtime_root` is pointed under D.
//! - CRI `restrict_oom_score_adj = true`: root lacks CAP_SYS_RESOURCE here, so the sandbox's
//!   oom_score_adj may not go below the daemon's. `netns_mounts_under_state_dir = true`: the
//!   pods' namespaces are `D/state/io.containerd.grpc.v1.cri/netns/cni-<uuid>` (a bind-mounted
//!   nsfs file; else /var/run/netns/cni-<uuid>). The runner must allow that directory
//!   ([`Containerd::netns_dir`] in `runner.netns_allow`). `disable_apparmor = true`.
//! - CRI `cni.bin_dir` (one directory in 1.6, not a list): D/cni-bin, symlinks to the caller's
//!   plugins plus `loopback` (from /usr/lib/cni): the CRI plugin always sets up `lo` through a
//!   network of its own named `cni-loopback` besides the first conflist of `cni.conf_dir`
//!   (D/cni-conf, our copy of the caller's; `max_conf_num = 1`). Its libcni is 1.1
//!   (spec <= 1.0.0): use cniVersion 1.0.0 in the conflist.
//! - `sandbox_image` = [`SANDBOX_IMAGE`], built here as an OCI archive (one uncompressed layer
//!   holding a busybox-static rootfs, entrypoint `/bin/sleep 2147483647`; no registry is
//!   reachable) and imported with `ctr -a D/containerd.sock -n k8s.io images import`; the CRI
//!   plugin sees it from the image event, [`Containerd::runtime`] waits until `ImageStatus`
//!   shows it, or `RunPodSandbox` would try to pull it.
//! - runtime `runc` (`io.containerd.runc.v2`) with `options.Root` D/runc (else /run/containerd/runc)
//!   and cgroupfs (no systemd). Pods get `linux.cgroup_parent` /NAME (NAME = D's file name;
//!   [`Containerd::pod_config`]), so their cgroups are `/sys/fs/cgroup/*/NAME/<sandbox id>`.
//!
//! What the CRI plugin sends to a CNI plugin at `RunPodSandbox`: ADD of `cni-loopback`
//! (`loopback`, `CNI_IFNAME=lo`) and of the conflist (`CNI_IFNAME=eth0`), both with
//! `CNI_CONTAINERID=<sandbox id, 64 hex>`, `CNI_NETNS=D/state/io.containerd.grpc.v1.cri/netns/cni-…`,
//! `CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=…;K8S_POD_NAME=…;K8S_POD_INFRA_CONTAINER_ID=…;K8S_POD_UID=…`.
//! `StopPodSandbox` kills the sandbox (SIGKILL: an entrypoint that ignores SIGTERM is fine),
//! sends DEL and removes the namespace file; `RemovePodSandbox` removes the rest. A DEL that
//! fails makes both fail (the pod stays, `SANDBOX_UNKNOWN` after a failed ADD). The whole test
//! (lab, containerd, one pod) takes about 1 s here; containerd is ready in ~15 ms. The pod's address is `PodSandboxStatus.network.ip`,
//! its namespace path is in the verbose info (`runtimeSpec.linux.namespaces`).
//!
//! Global paths touched, and what [`Containerd`]'s drop does about them:
//! - `/run/containerd/s/<sha256 of "ADDRESS/k8s.io/ID">`: each shim's socket (the shim
//!   hard-codes /run/containerd/s, whatever `state` says); removed by the shim when it exits,
//!   leftovers of our containers removed; `/run/containerd{/s,}` removed after the last live
//!   [`Containerd`] of the process if empty and absent before the first.
//! - `/var/lib/cni/results/<net>-<id>-<if>` (libcni's cache, not configurable in 1.6): removed
//!   by DEL; leftovers of our sandboxes removed; `/var/lib/cni{/results,}` likewise if empty.
//! - `/sys/fs/cgroup/*/NAME` (the pods' cgroups are removed by containerd, the parent is not):
//!   removed, after killing what is still in them.
//! - mounts under D (the namespaces' nsfs, sandboxes' `shm`, tasks' overlay `rootfs`):
//!   unmounted, deepest first, then D is removed.
//! - The shims (`containerd-shim-runc-v2 -namespace k8s.io -id ID -address D/containerd.sock`)
//!   outlive containerd: they are killed.
//!
//! Drop first stops and removes every pod through the CRI (so the CNI plugin gets its DEL while
//! the runner still runs: declare the lab before the [`Containerd`]), then stops containerd and
//! cleans up as above. A directory `/tmp/weir-crd-<pid>-<n>` of a test process that died is
//! cleaned by the next [`Containerd::prepare`] (only the kills, unmounts and removals: its
//! namespace is gone with its lab).
//!
//! Why D is in /tmp and not in the lab's directory: the lab directory of a dead test process is
//! removed by the next `spec()` (`clean_stale_labs`) before any harness can unmount what
//! containerd mounted there.
#![allow(dead_code)]

use crate::common::{busybox_rootfs, cgroup_pids, rmdir_tree, unescape_mountinfo};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use sha2::{Digest, Sha256};

/// The sandbox ("pause") image every [`Containerd`] imports.
pub const SANDBOX_IMAGE: &str = "weir.invalid/weir-pause:1";

const PREFIX: &str = "weir-crd-";
/// Directories containerd, its shims or libcni may create, deepest first; removed after the
/// last live [`Containerd`] if empty and absent before the first.
const GLOBAL_DIRS: &[&str] = &[
    "/run/containerd/s",
    "/run/containerd",
    "/var/lib/cni/results",
    "/var/lib/cni",
];
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct Global {
    live: usize,
    absent: Vec<&'static str>,
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    live: 0,
    absent: Vec::new(),
});
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One private containerd: its directory, and the daemon once started.
pub struct Containerd {
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Containerd {
    /// Make a fresh `/tmp/weir-crd-<pid>-<n>` (after cleaning those of dead test processes);
    /// nothing runs yet ([`Containerd::start`]). Its paths are known from here on, so a
    /// runner's `netns_allow` can name [`Containerd::netns_dir`] before the runner starts.
    pub fn prepare() -> Containerd {
        {
            let mut g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
            if g.live == 0 {
                clean_stale();
                g.absent = GLOBAL_DIRS
                    .iter()
                    .copied()
                    .filter(|d| !Path::new(d).exists())
                    .collect();
            }
            g.live += 1;
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/{PREFIX}{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let c = Containerd { dir, daemon: None };
        // From here on, a panic drops `c`, which cleans up.
        for sub in [
            "root", "state", "tmp", "home", "runc", "cni-bin", "cni-conf",
        ] {
            fs::create_dir_all(c.dir.join(sub)).unwrap();
        }
        // For the cleanup after a crash: which global directories were not there before.
        let absent = GLOBAL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .absent
            .join("\n");
        fs::write(c.dir.join("created-dirs"), absent).unwrap();
        c
    }

    /// Start containerd inside `netns` with `plugins` (CNI plugin executables; `loopback` is
    /// added from /usr/lib/cni unless among them) and a copy of the conflists (`*.conflist`,
    /// `*.conf`, `*.json`) of `conflist_dir`; wait until it answers, then import
    /// [`SANDBOX_IMAGE`].
    pub fn start(&mut self, netns: &Path, plugins: &[&Path], conflist_dir: &Path) {
        assert!(netns.exists(), "no namespace {}", netns.display());
        assert!(self.daemon.is_none(), "containerd is already started");
        fs::write(self.dir.join("netns"), netns.as_os_str().as_encoded_bytes()).unwrap();
        let bin = self.dir.join("cni-bin");
        for p in plugins {
            assert!(p.is_file(), "no CNI plugin {}", p.display());
            std::os::unix::fs::symlink(p, bin.join(p.file_name().unwrap())).unwrap();
        }
        if !bin.join("loopback").exists() {
            let lo = Path::new("/usr/lib/cni/loopback");
            assert!(
                lo.is_file(),
                "the CNI loopback plugin is missing (containernetworking-plugins)"
            );
            std::os::unix::fs::symlink(lo, bin.join("loopback")).unwrap();
        }
        if let Ok(entries) = fs::read_dir(conflist_dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let s = name.to_string_lossy();
                if s.ends_with(".conflist") || s.ends_with(".conf") || s.ends_with(".json") {
                    fs::copy(e.path(), self.dir.join("cni-conf").join(&name)).unwrap();
                }
            }
        }
        fs::write(self.dir.join("config.toml"), self.config()).unwrap();
        let log = fs::File::create(self.log_path()).unwrap();
        let mut cmd = Command::new("nsenter");
        // containerd dies with the test process (the shims and pods do not: the next
        // `prepare` cleans them up). nsenter without --pid execs containerd, which keeps it.
        // SAFETY: the closure only makes an async-signal-safe system call.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .arg(format!("--net={}", netns.display()))
            .arg("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env_clear()
            .env("PATH", PATH)
            .env("TMPDIR", self.dir.join("tmp"))
            .env("HOME", self.dir.join("home"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd (apt-get install containerd)");
        self.daemon = Some(child);
        // Ready when `ctr version` gets an answer from the server.
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("containerd exited ({st}): {}", self.log());
            }
            let out = self.ctr(&["version"]).output().unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not answer within 30 s: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let archive = self.build_sandbox_image();
        let out = self
            .ctr(&["-n", "k8s.io", "images", "import"])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr images import failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let _ = fs::remove_file(&archive);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Where the CRI plugin puts the pods' network namespaces.
    pub fn netns_dir(&self) -> PathBuf {
        self.dir.join("state/io.containerd.grpc.v1.cri/netns")
    }

    /// containerd's log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The log's last lines, for messages.
    pub fn log(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The cgroup parent of our pods (`/NAME`).
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", name_of(&self.dir))
    }

    /// A pod's configuration: name, namespace `default`, a uid from the name, our cgroup parent.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `ctr -a SOCKET ARGS...` (in the caller's namespace: it only talks to the socket).
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.env_clear()
            .env("PATH", PATH)
            .arg("-a")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// A CRI `RuntimeService` client, once the CRI plugin answers `Version` and knows
    /// [`SANDBOX_IMAGE`] (the image event of the import is handled asynchronously).
    pub async fn runtime(
        &self,
    ) -> cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
        let ch = cri_channel(&self.socket()).await;
        let mut rt = cri::runtime_service_client::RuntimeServiceClient::new(ch.clone());
        let mut img = cri::image_service_client::ImageServiceClient::new(ch);
        let start = Instant::now();
        let mut last;
        loop {
            last = match rt.version(cri::VersionRequest::default()).await {
                Ok(v) => {
                    let v = v.into_inner();
                    assert_eq!(
                        v.runtime_api_version, "v1",
                        "the CRI plugin answers runtime.v1: {v:?}"
                    );
                    let st = img
                        .image_status(cri::ImageStatusRequest {
                            image: Some(cri::ImageSpec {
                                image: SANDBOX_IMAGE.into(),
                                ..Default::default()
                            }),
                            verbose: false,
                        })
                        .await;
                    match st {
                        Ok(s) if s.get_ref().image.is_some() => return rt,
                        Ok(_) => format!("{SANDBOX_IMAGE} is not known yet"),
                        Err(e) => format!("ImageStatus: {e}"),
                    }
                }
                Err(e) => format!("Version: {e}"),
            };
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the CRI plugin is not ready after 30 s ({last}): {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn config(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
temp = "{d}/tmp"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{d}/runc-v1"

[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  sandbox_image = "{SANDBOX_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
        SystemdCgroup = false
"#
        )
    }

    /// An OCI image layout archive (`oci-layout`, `index.json`, `blobs/sha256/…`) of a
    /// busybox-static rootfs whose entrypoint sleeps (a sandbox's process only holds the
    /// namespaces; StopPodSandbox kills it with SIGKILL).
    fn build_sandbox_image(&self) -> PathBuf {
        let rootfs = self.dir.join("rootfs");
        busybox_rootfs(&rootfs);
        let layout = self.dir.join("oci");
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let blob = |bytes: &[u8]| -> (String, usize) {
            let hex = format!("{:x}", Sha256::digest(bytes));
            fs::write(blobs.join(&hex), bytes).unwrap();
            (format!("sha256:{hex}"), bytes.len())
        };
        let layer = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["--numeric-owner", "--owner=0", "--group=0", "-cf", "-", "."])
            .output()
            .unwrap();
        assert!(layer.status.success(), "tar of the busybox rootfs failed");
        let (layer_digest, layer_size) = blob(&layer.stdout);
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {
                "Entrypoint": ["/bin/sleep", "2147483647"],
                "Env": ["PATH=/bin"],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let (config_digest, config_size) = blob(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }],
        });
        let (manifest_digest, manifest_size) = blob(manifest.to_string().as_bytes());
        let (_, tag) = SANDBOX_IMAGE.rsplit_once(':').unwrap();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                // `ctr import` names the image after this annotation.
                "annotations": {
                    "io.containerd.image.name": SANDBOX_IMAGE,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        });
        fs::write(layout.join("index.json"), index.to_string()).unwrap();
        fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let archive = self.dir.join("sandbox-image.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .arg(".")
            .status();
        assert!(
            st.map(|s| s.success()).unwrap_or(false),
            "tar of the OCI layout failed"
        );
        let _ = fs::remove_dir_all(&layout);
        let _ = fs::remove_dir_all(&rootfs);
        archive
    }

    /// Stop and remove every pod through the CRI, each step bounded in time; on a thread of
    /// its own with its own runtime (Drop may run inside the test's runtime).
    fn remove_pods(&self) {
        let socket = self.socket();
        let t = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let step = Duration::from_secs(20);
                let Ok(ch) = tokio::time::timeout(step, cri_channel(&socket)).await else {
                    return;
                };
                let mut c = cri::runtime_service_client::RuntimeServiceClient::new(ch);
                let Ok(Ok(pods)) = tokio::time::timeout(
                    step,
                    c.list_pod_sandbox(cri::ListPodSandboxRequest::default()),
                )
                .await
                else {
                    return;
                };
                for p in pods.into_inner().items {
                    let id = p.id;
                    let _ = tokio::time::timeout(
                        step,
                        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        }),
                    )
                    .await;
                    let _ = tokio::time::timeout(
                        step,
                        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }),
                    )
                    .await;
                }
            });
        });
        let _ = t.join();
    }
}

/// A channel to containerd's socket (tonic's `unix:` endpoint works with containerd's grpc-go
/// server as it is), retried until it connects (30 s at most).
async fn cri_channel(socket: &Path) -> tonic::transport::Channel {
    let url = format!("unix://{}", socket.display());
    let ep = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60));
    let start = Instant::now();
    loop {
        match ep.connect().await {
            Ok(ch) => return ch,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(30),
                "cannot connect to {url}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn name_of(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

/// Processes whose command line has `needle` among its arguments (exactly).
fn pids_with_arg(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

fn kill9(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// Wait up to `timeout` until none of `pids` is alive (a zombie of another parent counts as
/// gone).
fn wait_gone(pids: &[u32], timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let alive = pids.iter().any(|p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| {
                    let state = s.rsplit_once(") ").map(|(_, r)| r.chars().next());
                    state != Some(Some('Z'))
                })
                .unwrap_or(false)
        });
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ids of the sandboxes and containers this containerd knows (from its directories).
fn container_ids(dir: &Path) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let listing = |p: PathBuf| -> Vec<String> {
        fs::read_dir(p)
            .map(|es| {
                es.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    ids.extend(listing(
        dir.join("root/io.containerd.grpc.v1.cri/sandboxes"),
    ));
    ids.extend(listing(
        dir.join("root/io.containerd.grpc.v1.cri/containers"),
    ));
    for ns in listing(dir.join("state/io.containerd.runtime.v2.task")) {
        ids.extend(listing(
            dir.join("state/io.containerd.runtime.v2.task").join(&ns),
        ));
    }
    ids.retain(|i| i.len() == 64 && i.bytes().all(|b| b.is_ascii_hexdigit()));
    ids
}

/// Remove everything of the containerd whose directory is `dir` after its daemon is gone (or
/// never ran): what runs in its cgroups, its shims, mounts, shim sockets, libcni cache
/// entries, cgroups, and `dir`.
fn teardown(dir: &Path) {
    let name = name_of(dir);
    let socket = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    // A dead test process's daemon (ours was stopped by Drop already).
    let daemons = pids_with_arg(&config.to_string_lossy());
    daemons.iter().copied().for_each(kill9);
    wait_gone(&daemons, Duration::from_secs(5));
    // Our cgroups: `/sys/fs/cgroup/<controller>/NAME` (v1) or `/sys/fs/cgroup/NAME` (v2).
    let mut cgroups: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .map(|ctls| ctls.flatten().map(|c| c.path().join(&name)).collect())
        .unwrap_or_default();
    cgroups.push(PathBuf::from(format!("/sys/fs/cgroup/{name}")));
    cgroups.retain(|c| c.is_dir());
    let start = Instant::now();
    loop {
        let pids: BTreeSet<u32> = cgroups.iter().flat_map(|c| cgroup_pids(c)).collect();
        if pids.is_empty() || start.elapsed() > Duration::from_secs(5) {
            break;
        }
        pids.iter().copied().for_each(kill9);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The shims (they outlive containerd by design).
    let shims = pids_with_arg(&socket.to_string_lossy());
    shims.iter().copied().for_each(kill9);
    wait_gone(&shims, Duration::from_secs(5));
    let ids = container_ids(dir);
    for id in &ids {
        let hash = Sha256::digest(format!("{}/k8s.io/{id}", socket.display()).as_bytes());
        let _ = fs::remove_file(format!("/run/containerd/s/{hash:x}"));
    }
    if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
        for e in entries.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| f.contains(&format!("-{id}-"))) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    for _ in 0..100 {
        cgroups.iter().for_each(|c| rmdir_tree(c));
        if cgroups.iter().all(|c| !c.exists()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Mounts under dir, deepest first.
    let dir_s = dir.to_string_lossy().into_owned();
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mountinfo))
        .filter(|m| m == &dir_s || m.starts_with(&format!("{dir_s}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&m)
            .stderr(Stdio::null())
            .status();
    }
    let _ = fs::remove_dir_all(dir);
}

/// Tear down the directories of test processes that died.
fn clean_stale() {
    let Ok(entries) = fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = f.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let created = fs::read_to_string(e.path().join("created-dirs")).unwrap_or_default();
            teardown(&e.path());
            for d in GLOBAL_DIRS
                .iter()
                .filter(|d| created.lines().any(|l| l == **d))
            {
                let _ = fs::remove_dir(d); // only if empty
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            if matches!(child.try_wait(), Ok(None)) {
                self.remove_pods();
            }
            // SIGTERM, then SIGKILL after 5 s.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) {
                if start.elapsed() > Duration::from_secs(5) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if std::thread::panicking() {
                let _ = writeln!(
                    std::io::stderr(),
                    "containerd's log ({}):\n{}",
                    self.log_path().display(),
                    self.log()
                );
            }
        }
        teardown(&self.dir);
        let mut g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
        g.live -= 1;
        if g.live == 0 {
            for d in &g.absent {
                let _ = fs::remove_dir(d); // only if empty
            }
        }
    }
}
