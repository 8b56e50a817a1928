//! Podman 4.3 with its CNI backend, run inside a network namespace of the test's own, with all
//! of its state in one private directory: for tests that drive a CNI plugin (`weir-cni`)
//! through a real container engine (`podman run --network NAME ...`, NAME a conflist of ours).
//!
//! Verified by hand on Debian 12 (podman 4.3.1+ds1-8+deb12u1, runc 1.1.5, conmon 2.1.6,
//! containernetworking-plugins 1.1.1, busybox-static 1.35, cgroup v1, hard nofile 20000) with a
//! `bridge` + `host-local` conflist (10.99.0.0/24 on bridge `wh0`): import, `run -d`, the
//! address in `inspect`, ping of the gateway from the container, `rm -f` releasing the
//! host-local address, `--ip` static addresses, and that nothing is left behind after the
//! cleanup below. Every command is
//!
//! ```text
//! env -i PATH=... HOME=D/home TMPDIR=D/tmp CONTAINERS_CONF=D/containers.conf \
//!     CONTAINERS_STORAGE_CONF=D/storage.conf CONTAINERS_REGISTRIES_CONF=D/registries.conf \
//!   nsenter --net=NETNS podman --root D/root --runroot D/runroot --tmpdir D/tmp \
//!     --cgroup-manager cgroupfs --events-backend file --network-config-dir D/cni \
//!     --runtime-flag root=D/runc ARGS...
//! ```
//!
//! and `run`/`create` also get `--cgroup-parent=/NAME` (NAME = D's file name). Why each piece:
//! - `nsenter --net=` (not `ip netns exec`, which remounts /sys and so breaks runc's cgroup
//!   detection): podman, conmon and the CNI plugins then see only our namespace; podman makes
//!   each container's namespace there (`/run/netns/netns-<uuid>`, global, removed at `rm`).
//! - `--root`/`--runroot` (also `graphroot`/`runroot` in storage.conf): image and container
//!   storage, otherwise /var/lib/containers/storage and /run/containers/storage.
//! - `--tmpdir` (also `engine.tmp_dir`): libpod's state (exits, locks, ...), otherwise /run/libpod.
//! - `--cgroup-manager cgroupfs`: no systemd runs here. `--events-backend file` (+
//!   `events_logfile_path`): no journald.
//! - `--network-config-dir` (podman 4.3's name; also `network.network_config_dir`): where the
//!   conflists are read (otherwise /etc/cni/net.d, where Debian's podman ships
//!   `87-podman-bridge.conflist`). Podman writes a `cni.lock` there, so it is our own copy
//!   (`D/cni`) of the caller's conflist directory, not that directory.
//! - `--runtime-flag root=D/runc`: runc's state, otherwise /run/runc.
//! - `--cgroup-parent=/NAME`: the container's cgroups (`/NAME/libpod-<id>`) and conmon's
//!   (`/NAME/conmon`, left behind by podman) under a parent of our own, otherwise
//!   `/libpod_parent`, shared. `--cgroups=disabled` would avoid them but runc refuses it.
//! - containers.conf (`CONTAINERS_CONF` replaces every other containers.conf):
//!   `network_backend = "cni"` (Debian's podman 4.3 defaults to netavark 1.4, which has no
//!   plugins), `cni_plugin_dirs` = the caller's plugin directories (podman passes them as
//!   `CNI_PATH`), `runtime = "runc"` (crun fails here), `default_ulimits` below the hard
//!   limits (podman asks for nofile/nproc = 1048576/4194304 otherwise and runc fails with
//!   "error setting rlimit type 6 (nproc): operation not permitted"), `lock_type = "file"`
//!   (locks under tmp_dir instead of the shared `/dev/shm/libpod_lock`), `static_dir`,
//!   `volume_path`, `events_logfile_path` under D.
//! - storage.conf via `CONTAINERS_STORAGE_CONF`, an empty registries.conf via
//!   `CONTAINERS_REGISTRIES_CONF`, `HOME` under D (nothing from /root/.config), `env -i`: the
//!   CNI plugins inherit podman's whole environment, so they see only these variables.
//!
//! Config files alone (no global flags) were checked to give the same paths; the flags are
//! kept as well, explicit.
//!
//! What podman 4.3 sends to a CNI plugin (captured by a wrapper that tees stdin and env):
//! - conflists are validated at every load by `VERSION` (stdin `{"cniVersion":"<list's>"}`,
//!   `CNI_COMMAND=VERSION CNI_CONTAINERID= CNI_IFNAME=dummy CNI_NETNS=dummy CNI_PATH=dummy`);
//!   a conflist whose cniVersion a plugin does not list in `supportedVersions` is dropped with a
//!   warning ("network not found"). Podman's libcni is 1.1.x (spec <= 1.0.0): use
//!   cniVersion 1.0.0 (podman itself writes 0.4.0 conflists).
//! - `run`/`start`: ADD of each plugin, `CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=<name>`, plus
//!   `;MAC=<mac>` for `--mac-address` and `;IP=<ip>` for `--ip` (a static IP goes in CNI_ARGS,
//!   never in `runtimeConfig.ips`), `CNI_CONTAINERID=<64 hex>`, `CNI_IFNAME=eth0`,
//!   `CNI_NETNS=/run/netns/netns-<uuid>`, `CNI_PATH=<cni_plugin_dirs>`. stdin: the plugin's
//!   conf with `name` and `cniVersion` injected and `runtimeConfig` holding only the declared
//!   capabilities among `aliases` (`{"<net>": ["<alias>...", "<short id>"]}`, always) and
//!   `portMappings` (with `-p`). Labels are not passed.
//! - `stop`, `rm`: DEL with the same env and `prevResult`; `network reload`: DEL then ADD.
//!   No CHECK, GC or STATUS ever.
//!
//! Global paths touched, and what [`Podman`]'s drop does about them:
//! - `/run/netns/netns-<uuid>` per running container: removed by `rm`; any left (crash) is
//!   unmounted and removed.
//! - `/var/lib/cni/results/<net>-<id>-<if>` (podman's libcni cache, not configurable):
//!   removed by DEL; leftovers of our containers removed; `/var/lib/cni{/results,}` removed
//!   after the last live `Podman` of the process if empty.
//! - `/var/lib/containers/cache/blob-info-cache-v1.boltdb` (written by `import`, not
//!   configurable for root): removed after the last live `Podman` if it was absent before the
//!   first one (or made by a dead process's); `/var/lib/containers{/cache,}` if empty.
//! - `/sys/fs/cgroup/*/NAME` (with `conmon` in it): removed (after waiting for conmon to exit,
//!   killing what is still in them after 2 s).
//! - mounts under D (`D/root/overlay`, `.../merged`, `.../userdata/shm`): unmounted after
//!   `rm -fa` (podman normally does it itself), then D is removed.
//! - nothing in /run/containers, /run/libpod, /run/runc, /etc/cni, /dev/shm, /var/tmp.
//!
//! A directory `/tmp/weir-podman-<pid>-<n>` left by a test process that died is cleaned by the
//! next [`Podman::new`]: `rm -fa` in the namespace recorded in `D/netns` if it still exists
//! (so the plugins get their DEL), else only the kills, unmounts and removals above.
#![allow(dead_code)]

use crate::common::{busybox_rootfs, cgroup_pids, rmdir_tree, unescape_mountinfo};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// The busybox image every [`Podman`] imports (`sleep`, `ping`, `nc`, `ip`; not `wget`, which
/// segfaults in such a rootfs).
pub const IMAGE: &str = "localhost/weir-bb";

const PREFIX: &str = "weir-podman-";

/// Written by `import` (containers/image's blob info cache; its place is not configurable for
/// root). Removed after the last live [`Podman`] if it was absent before the first, or if a
/// dead test process's [`Podman`] created it.
const BLOB_CACHE: &str = "/var/lib/containers/cache/blob-info-cache-v1.boltdb";
/// Directories podman may create, deepest first; removed after the last live [`Podman`] if
/// empty.
const GLOBAL_DIRS: &[&str] = &[
    "/var/lib/containers/cache",
    "/var/lib/containers",
    "/var/lib/cni/results",
    "/var/lib/cni",
    "/run/runc",
];

struct Global {
    live: usize,
    remove_blob_cache: bool,
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    live: 0,
    remove_blob_cache: false,
});
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One private podman: its state directory and the namespace it runs in.
pub struct Podman {
    dir: PathBuf,
    netns: PathBuf,
}

impl Podman {
    /// Write the configuration into a fresh `/tmp/weir-podman-<pid>-<n>`, copy the conflists
    /// (`*.conflist`, `*.conf`, `*.json`) of `conflist_dir` into its `cni/`, and import the
    /// busybox image as [`IMAGE`]. Podman re-reads [`Podman::network_dir`] at every command,
    /// so conflists can be added there later.
    pub fn new(netns: &Path, cni_plugin_dirs: &[&Path], conflist_dir: &Path) -> Podman {
        assert!(netns.exists(), "no namespace {}", netns.display());
        {
            let mut g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
            if g.live == 0 {
                g.remove_blob_cache = clean_stale() || !Path::new(BLOB_CACHE).exists();
            }
            g.live += 1;
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/{PREFIX}{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let p = Podman {
            dir,
            netns: netns.to_path_buf(),
        };
        // From here on, a panic drops `p`, which cleans up.
        for sub in ["cni", "tmp", "home", "root", "runroot", "runc"] {
            fs::create_dir_all(p.dir.join(sub)).unwrap();
        }
        fs::write(p.dir.join("netns"), netns.as_os_str().as_encoded_bytes()).unwrap();
        if !Path::new(BLOB_CACHE).exists() {
            fs::write(p.dir.join("created-blob-cache"), "").unwrap();
        }
        p.write_config(cni_plugin_dirs);
        if let Ok(entries) = fs::read_dir(conflist_dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let s = name.to_string_lossy();
                if s.ends_with(".conflist") || s.ends_with(".conf") || s.ends_with(".json") {
                    fs::copy(e.path(), p.network_dir().join(&name)).unwrap();
                }
            }
        }
        p.import_busybox();
        p
    }

    /// A podman for a member of a lab (its namespace `lab.ns(member)`).
    pub fn in_lab(
        lab: &weir::lab::Lab,
        member: &str,
        cni_plugin_dirs: &[&Path],
        conflist_dir: &Path,
    ) -> Podman {
        Podman::new(&lab.ns(member), cni_plugin_dirs, conflist_dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory podman reads conflists from (our copy).
    pub fn network_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    /// The exploded busybox rootfs (also usable as `podman run --rootfs DIR`).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn cgroup_parent(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn write_config(&self, cni_plugin_dirs: &[&Path]) {
        let d = self.dir.display();
        let plugin_dirs: Vec<String> = cni_plugin_dirs
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        let containers = format!(
            r#"[containers]
default_ulimits = ["nofile=10000:10000", "nproc=10000:10000"]
netns = "bridge"
log_driver = "k8s-file"

[network]
network_backend = "cni"
cni_plugin_dirs = [{plugins}]
network_config_dir = "{d}/cni"
default_network = "weirpodmandefault"
default_subnet = "10.254.254.0/24"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
static_dir = "{d}/root/libpod"
volume_path = "{d}/root/volumes"
lock_type = "file"
num_locks = 128
"#,
            plugins = plugin_dirs.join(", ")
        );
        fs::write(self.dir.join("containers.conf"), containers).unwrap();
        let storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/runroot\"\n"
        );
        fs::write(self.dir.join("storage.conf"), storage).unwrap();
        fs::write(self.dir.join("registries.conf"), "").unwrap();
    }

    fn import_busybox(&self) {
        let rootfs = self.rootfs();
        busybox_rootfs(&rootfs);
        let tar = self.dir.join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status();
        assert!(
            st.map(|s| s.success()).unwrap_or(false),
            "tar of the busybox rootfs failed"
        );
        self.run_ok(&["import", tar.to_str().unwrap(), IMAGE]);
        let _ = fs::remove_file(&tar);
    }

    /// The command `nsenter --net=NETNS podman <global flags> args...` with its environment.
    /// `run` and `create` get `--cgroup-parent=/NAME` unless `args` have one.
    pub fn command(&self, args: &[&str]) -> Command {
        podman_command(&self.dir, Some(&self.netns), &self.cgroup_parent(), args)
    }

    /// Run podman with `args` and return its output (no check of the status).
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("running podman")
    }

    /// Run podman with `args`; panic with its stderr unless it succeeds; return its stdout
    /// (trimmed).
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The IPv4 address of `container` on `network` (from `podman inspect`).
    pub fn ip(&self, container: &str, network: &str) -> String {
        let tmpl = format!("{{{{(index .NetworkSettings.Networks {network:?}).IPAddress}}}}");
        self.run_ok(&["inspect", "--format", &tmpl, container])
    }
}

/// `netns: None` runs podman in the caller's namespace: only for read-only commands (a CNI
/// DEL there could touch the wrong namespace).
fn podman_command(dir: &Path, netns: Option<&Path>, cgroup_parent: &str, args: &[&str]) -> Command {
    let d = |s: &str| dir.join(s);
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("podman");
            c
        }
        None => Command::new("podman"),
    };
    c.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", d("home"))
        .env("TMPDIR", d("tmp"))
        .env("CONTAINERS_CONF", d("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", d("storage.conf"))
        .env("CONTAINERS_REGISTRIES_CONF", d("registries.conf"));
    c.arg("--root").arg(d("root"));
    c.arg("--runroot").arg(d("runroot"));
    c.arg("--tmpdir").arg(d("tmp"));
    c.args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
    c.arg("--network-config-dir").arg(d("cni"));
    c.arg("--runtime-flag")
        .arg(format!("root={}", d("runc").display()));
    if let Some((first, rest)) = args.split_first() {
        c.arg(first);
        if matches!(*first, "run" | "create")
            && !rest.iter().any(|a| a.starts_with("--cgroup-parent"))
        {
            c.arg(format!("--cgroup-parent=/{cgroup_parent}"));
        }
        c.args(rest);
    }
    c
}

/// Remove everything of the podman whose directory is `dir` (running or not): its
/// containers (with `rm -fa` in its namespace, so the CNI plugins get their DEL, if the
/// namespace still exists; else only by killing what is in its cgroups), their namespaces,
/// libcni cache entries, cgroups, mounts, and `dir`.
fn teardown(dir: &Path) {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let netns = fs::read(dir.join("netns"))
        .ok()
        .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()))
        .filter(|n| n.exists());
    if dir.join("storage.conf").exists() {
        let pm = |args: &[&str]| {
            podman_command(dir, netns.as_deref(), &name, args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()
        };
        let ids: Vec<String> = pm(&["ps", "-aq", "--no-trunc"])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let mut sandboxes = BTreeSet::new();
        if !ids.is_empty() {
            let mut a = vec!["inspect", "--format", "{{.NetworkSettings.SandboxKey}}"];
            a.extend(ids.iter().map(String::as_str));
            if let Some(o) = pm(&a) {
                sandboxes.extend(
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::trim)
                        .filter(|l| {
                            l.starts_with("/run/netns/") || l.starts_with("/var/run/netns/")
                        })
                        .map(PathBuf::from),
                );
            }
            if netns.is_some() {
                pm(&["rm", "-fa", "-t", "0"]);
            }
        }
        for ns in sandboxes.iter().filter(|p| p.exists()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(ns)
                .stderr(Stdio::null())
                .status();
            let _ = fs::remove_file(ns);
        }
        if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
            for e in entries.flatten() {
                let f = e.file_name().to_string_lossy().into_owned();
                if ids.iter().any(|id| f.contains(&format!("-{id}-"))) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    // Our cgroups: `/sys/fs/cgroup/<controller>/NAME` (v1) or `/sys/fs/cgroup/NAME` (v2).
    // conmon exits a moment after `rm`, and a cgroup is busy until then: wait up to 2 s,
    // then kill what is still there (a conmon or container that `rm` could not stop).
    let mut cgroups: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .map(|ctls| ctls.flatten().map(|c| c.path().join(&name)).collect())
        .unwrap_or_default();
    cgroups.push(PathBuf::from(format!("/sys/fs/cgroup/{name}")));
    cgroups.retain(|c| c.is_dir());
    let start = std::time::Instant::now();
    loop {
        let pids: BTreeSet<u32> = cgroups.iter().flat_map(|c| cgroup_pids(c)).collect();
        if pids.is_empty() {
            break;
        }
        if start.elapsed() > std::time::Duration::from_secs(2) {
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if start.elapsed() > std::time::Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for _ in 0..40 {
        cgroups.iter().for_each(|c| rmdir_tree(c));
        if cgroups.iter().all(|c| !c.exists()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
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

/// Tear down the directories of test processes that died; true if one of them had created
/// the blob info cache.
fn clean_stale() -> bool {
    let mut blob_cache = false;
    let Ok(entries) = fs::read_dir("/tmp") else {
        return false;
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
            blob_cache |= e.path().join("created-blob-cache").exists();
            teardown(&e.path());
        }
    }
    blob_cache
}

impl Drop for Podman {
    fn drop(&mut self) {
        teardown(&self.dir);
        let mut g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
        g.live -= 1;
        if g.live == 0 {
            if g.remove_blob_cache {
                let _ = fs::remove_file(BLOB_CACHE);
            }
            for d in GLOBAL_DIRS {
                let _ = fs::remove_dir(d); // only if empty
            }
        }
    }
}
