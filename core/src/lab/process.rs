//! Daemons inside lab namespaces: started with `setns` before `exec`, awaited through the
//! systemd readiness protocol, killed by namespace membership.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::UnixDatagram;

use super::Lab;

/// Make `cmd` run inside the network namespace at `ns`.
pub fn run_in_namespace<'c>(cmd: &'c mut Command, ns: &Path) -> io::Result<&'c mut Command> {
    let fd: OwnedFd = File::open(ns)
        .map_err(|e| io::Error::new(e.kind(), format!("open namespace {}: {e}", ns.display())))?
        .into();
    // SAFETY: the closure only makes an async-signal-safe system call on an fd it owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// A `weir` daemon of the lab.
pub struct Daemon {
    pub role: String,
    pub pid: u32,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Start `weir --config CFG ARGS…` inside the namespace of `role` and wait for `READY=1`.
    pub async fn start(lab: &Lab, role: &str, args: &[&str], cfg: &Path) -> io::Result<Daemon> {
        let notify_path = lab.dir.join(format!("notify-{role}.sock"));
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        let log = lab.dir.join(format!("{role}.log"));
        let out = File::options().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&lab.spec.weir_bin);
        cmd.arg("--config")
            .arg(cfg)
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .env(
                "WEIR_LOG",
                std::env::var("WEIR_LAB_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("WEIR_CONFIG")
            .envs(
                lab.daemon_env
                    .get(role)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v)),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        run_in_namespace(&mut cmd, &lab.ns(role))?;
        let detached = lab.spec.detached;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if detached {
                    // Outlive `weir lab up` and its terminal.
                    libc::setsid();
                } else if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    // Test labs: daemons die with the test process, even on a crash.
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let mut buf = [0u8; 512];
        let ready_timeout = lab.spec.ready_timeout;
        let deadline = tokio::time::Instant::now() + ready_timeout;
        loop {
            let wait = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                notify.recv(&mut buf),
            )
            .await;
            match wait {
                Ok(Ok(n))
                    if String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "READY=1") =>
                {
                    break;
                }
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    if let Some(status) = child.try_wait()? {
                        let _ = std::fs::remove_file(&notify_path);
                        return Err(io::Error::other(format!(
                            "{role} exited ({status}) before it was ready:\n{}",
                            tail(&log, 15)
                        )));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(io::Error::other(format!(
                            "{role} was not ready within {}s:\n{}",
                            ready_timeout.as_secs(),
                            tail(&log, 15)
                        )));
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&notify_path);
        Ok(Daemon {
            role: role.to_string(),
            pid,
            log,
            child: Some(child),
        })
    }

    /// Send a signal (e.g. `libc::SIGKILL`, `libc::SIGTERM`) and wait for the process to end.
    pub fn stop(&mut self, signal: i32) -> io::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(io::Error::other(format!("{} is not running", self.role)));
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait()
    }

    /// Wait up to `timeout` for the process to end by itself (a fault point killed it).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Let the process live on when this value is dropped.
    pub fn forget(&mut self) {
        self.child = None;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Processes whose network namespace is one of `inodes` (never this process).
pub fn pids_in_namespaces(inodes: &[u64]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .and_then(|l| {
                    let s = l.to_string_lossy().into_owned();
                    s.strip_prefix("net:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|ino| inodes.contains(&ino))
        })
        .collect()
}

/// SIGKILL a process and wait (briefly) until it is gone.
pub fn kill_and_reap(pid: i32) {
    // SAFETY: plain kill(2)/waitpid(2) calls.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        // Reap it if it is our child; otherwise its parent (or init) will.
        libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
    }
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its parent: either way it holds no namespace.
        if stat.is_empty() || stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
