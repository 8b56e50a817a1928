//! A private dockerd (Debian's docker.io 20.10) inside a lab member's network namespace and a
//! mount namespace of its own, for tests of Weir's Docker network driver.
//!
//! A holder process makes the mount namespace and keeps it:
//!
//! ```text
//! nsenter --net=NETNS unshare --mount --propagation private sh -c '
//!     mount -t tmpfs … /tmp/NAME; bind /run/weir-lab into it; mount --move it to /run
//!                                            # exec-root, containerd, runc, netns: private
//!     mount --bind PLUGINS /run/docker/plugins   # the runner's driver socket, as `weir`
//!     mount -t tmpfs … /etc/docker           # key.json
//!     touch D/mounted; exec sleep …'
//! ```
//!
//! and dockerd runs (and is restarted) inside it, so a restarted dockerd finds the same `/run`
//! (with `--live-restore`, its containers' shims and namespaces):
//!
//! ```text
//! nsenter --net=NETNS --mount=/proc/HOLDER/ns/mnt dockerd --data-root D/data
//!     --pidfile D/docker.pid -H unix://D/docker.sock --iptables=false --ip6tables=false
//!     --ip-masq=false --ip-forward=false --default-runtime runc --cgroup-parent=/NAME
//!     --live-restore [--bridge=none]
//! ```
//!
//! so everything Docker writes to global places (`/run/docker/plugins`, `/var/run/docker`,
//! its containerd's state, `/etc/docker/key.json`) lands in mounts that vanish with it, and
//! the runner's socket (made outside, in the lab directory) is what Docker finds as the
//! plugin `weir`. The containers' cgroups are under `/NAME`, removed on drop. Images: the
//! busybox-static rootfs imported as [`IMAGE`] (`docker import`).
#![allow(dead_code)]

use crate::common::{busybox_rootfs, cgroup_pids, rmdir_tree};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "weir-bb";

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct Dockerd {
    dir: PathBuf,
    child: Child,
    /// Holds the mount namespace (a `sleep`): a restarted dockerd finds the same `/run`, so
    /// with `--live-restore` its running containers (their shims, namespaces) carry on.
    holder: Child,
    cgroup: String,
    /// Where it runs (for a restart).
    netns: PathBuf,
}

impl Dockerd {
    /// Start a dockerd in `netns` whose `/run/docker/plugins` is `plugins`, wait until it
    /// answers, and import the busybox image. `bridge`: keep Docker's own `docker0` network.
    pub fn start(dir: &Path, netns: &Path, plugins: &Path, bridge: bool) -> Dockerd {
        clean_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let cgroup = format!("{PREFIX}{}-{n}", std::process::id());
        fs::create_dir_all(dir.join("data")).unwrap();
        fs::create_dir_all(dir.join("cli")).unwrap();
        fs::create_dir_all(plugins).unwrap();
        let d = dir.display();
        // A fresh /run, made aside (with the labs' directory bound into it) and moved over.
        let staging = PathBuf::from(format!("/tmp/{cgroup}"));
        fs::create_dir_all(&staging).unwrap();
        let mounts = format!(
            "set -e\n\
             mount -n -t tmpfs -o mode=0755 weir-docker-run {t}\n\
             mkdir -p {t}/docker/plugins {t}/weir-lab\n\
             mount -n --rbind /run/weir-lab {t}/weir-lab\n\
             mount -n --move {t} /run\n\
             mount -n --bind {plugins} /run/docker/plugins\n\
             mount -n -t tmpfs -o mode=0755 weir-docker-etc /etc/docker\n\
             touch {d}/mounted\n\
             exec sleep 1000000\n",
            plugins = plugins.display(),
            t = staging.display(),
        );
        let holder = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(mounts)
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare a mount namespace for dockerd");
        let script = format!(
            "exec dockerd --data-root {d}/data --pidfile {d}/docker.pid -H unix://{d}/docker.sock \
             --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
             --default-runtime runc --cgroup-parent=/{cgroup} --live-restore {bridge} \
             >>{d}/dockerd.log 2>&1\n",
            bridge = if bridge { "" } else { "--bridge=none" },
        );
        fs::write(dir.join("start.sh"), &script).unwrap();
        let placeholder = Command::new("true").spawn().unwrap();
        let mut me = Dockerd {
            dir: dir.to_path_buf(),
            child: placeholder,
            holder,
            cgroup,
            netns: netns.to_path_buf(),
        };
        // From here on a panic drops `me`, which cleans up.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dir.join("mounted").exists() {
            if let Ok(Some(st)) = me.holder.try_wait() {
                panic!("the mount namespace for dockerd could not be made ({st})");
            }
            assert!(Instant::now() < deadline, "no mount namespace after 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        me.child = me.spawn();
        me.wait_ready();
        me.import_busybox();
        me
    }

    /// dockerd inside the holder's mount namespace and `netns`.
    fn spawn(&self) -> Child {
        let script = fs::read_to_string(self.dir.join("start.sh")).unwrap();
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .args(["sh", "-c"])
            .arg(script)
            .stdin(Stdio::null())
            .spawn()
            .expect("start dockerd (is docker.io installed? scripts/bootstrap.sh)")
    }

    /// Stop the daemon (SIGTERM; with `--live-restore` its containers keep running) and start
    /// it again on the same data and mounts.
    pub fn restart(&mut self) {
        self.terminate();
        self.child = self.spawn();
        self.wait_ready();
    }

    fn terminate(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.docker(&["version"]).status.success() {
                return;
            }
            let exited = fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .map_or(true, |s| s.contains(") Z "));
            assert!(!exited, "dockerd exited: {}", self.log());
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// `docker ARGS…` against this daemon (no check of the status).
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run docker")
    }

    /// The command `docker -H … ARGS…` (stdin closed).
    pub fn command(&self, args: &[&str]) -> Command {
        // Debian's client, of the daemon's version (another `docker` may come first on PATH).
        let cli = if Path::new("/usr/bin/docker").exists() {
            "/usr/bin/docker"
        } else {
            "docker"
        };
        let mut c = Command::new(cli);
        c.env("DOCKER_CONFIG", self.dir.join("cli"))
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// `docker ARGS…`, which must succeed; its stdout, trimmed.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {} failed: {}{}\ndockerd's log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn import_busybox(&self) {
        let rootfs = self.dir.join("rootfs");
        busybox_rootfs(&rootfs);
        let tar = self.dir.join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar of the busybox rootfs failed");
        self.ok(&["import", tar.to_str().unwrap(), IMAGE]);
        let _ = fs::remove_file(&tar);
        let _ = fs::remove_dir_all(&rootfs);
    }

    /// A container's address on a network (`docker inspect`).
    pub fn ip(&self, container: &str, network: &str) -> String {
        self.ok(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            container,
        ])
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first (their endpoints' DeleteEndpoint reach the driver while it runs).
        let ids = self.docker(&["ps", "-aq"]);
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = self.docker(&args);
        }
        // The child is the shell's exec: dockerd itself.
        self.terminate();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        remove_cgroups(&self.cgroup);
        let _ = fs::remove_dir_all(self.dir.join("data"));
        let _ = fs::remove_dir(format!("/tmp/{}", self.cgroup));
    }
}

/// The cgroups and `/tmp` staging directories are named `PREFIX<pid>-<n>`.
const PREFIX: &str = "weir-docker-";

/// What is still in the cgroup `/NAME` (shims, containers) dies; then the cgroups go.
fn remove_cgroups(name: &str) {
    let mut cgroups: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .map(|r| r.flatten().map(|e| e.path().join(name)).collect())
        .unwrap_or_default();
    cgroups.push(PathBuf::from(format!("/sys/fs/cgroup/{name}")));
    cgroups.retain(|c| c.is_dir());
    for _ in 0..100 {
        for c in &cgroups {
            for pid in cgroup_pids(c) {
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
}

/// What test processes that died (a timeout, a kill) left: their staging directories and
/// cgroups. Their dockerds ran in lab namespaces, which the lab's own stale cleanup removes
/// with everything in them.
fn clean_stale() {
    let Ok(entries) = fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_cgroups(&name);
        let _ = fs::remove_dir(e.path());
    }
}
