//! Real etcd servers for tests, benchmarks and the lab: start a cluster of 1 or 3 members,
//! kill and restart members, ask who leads.
//!
//! The members are Debian's `etcd` 3.4 (`etcd-server`; `scripts/bootstrap.sh` installs it),
//! tuned for speed (10 ms heartbeats, 100 ms elections) rather than for a loaded machine. Without
//! a namespace they listen on free ports of 127.0.0.1 and keep their data under the temporary
//! directory, so unprivileged unit tests can use them; with one they run inside that network
//! namespace (root only) on fixed ports. Every member dies with the process that started it
//! (`PR_SET_PDEATHSIG`), and dropping the cluster kills them and removes their data.
//!
//! Health and leadership are asked over etcd's HTTP endpoints (`GET /health`, the gRPC gateway's
//! `POST /v3/maintenance/status`) with a few lines of HTTP/1.0 on a `TcpStream`: no client crate,
//! no `etcdctl`, and inside a namespace the same code runs on a thread that entered it.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{LAB_RUN_DIR, run_in_namespace};
use crate::dataplane::netns;

/// The etcd server program (found on `PATH`).
const ETCD_BIN: &str = "etcd";
/// How long [`EtcdCluster::start`] and [`EtcdCluster::restart`] wait for health.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// One HTTP request to a member: connect, write, read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Between two polls of a member that is not ready yet.
const POLL: Duration = Duration::from_millis(50);
/// Log lines quoted in an error.
const LOG_TAIL: usize = 15;
/// The first client and peer ports inside a namespace (member `i` adds `10 * i`).
const NS_CLIENT_PORT: u16 = 2379;
const NS_PEER_PORT: u16 = 2380;

/// Makes data directories and cluster tokens unique within this process.
static CLUSTERS: AtomicU64 = AtomicU64::new(0);

/// What cluster to start.
#[derive(Debug, Clone)]
pub struct EtcdSpec {
    /// Short name (letters, digits, `-`, `_`): part of the data directory and the cluster token.
    pub name: String,
    /// How many members (1 or 3 typically).
    pub members: usize,
    /// Run inside this network namespace (a name from `ip netns`, or a path); `None` runs in
    /// the caller's namespace on free ports of 127.0.0.1, unprivileged.
    pub netns: Option<String>,
    /// With `netns`: listen on this address of the namespace rather than its 127.0.0.1 (so
    /// other namespaces reach the members).
    pub address: Option<Ipv4Addr>,
}

impl EtcdSpec {
    /// `members` members on free ports of 127.0.0.1 in the caller's namespace.
    pub fn local(name: &str, members: usize) -> Self {
        Self {
            name: name.to_string(),
            members,
            netns: None,
            address: None,
        }
    }
}

/// One member: its addresses, files and (while it runs) its process.
struct Member {
    client: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster. Dropping it kills every member and removes the data directory.
pub struct EtcdCluster {
    spec: EtcdSpec,
    dir: PathBuf,
    /// The namespace's path, with `spec.netns`.
    ns: Option<PathBuf>,
    token: String,
    members: Vec<Member>,
    /// Dropped after `Drop::drop` has killed the members (fields drop after it).
    spawner: Spawner,
}

impl EtcdCluster {
    /// Start `members` members and wait until every member is healthy and a leader is elected
    /// (up to 20 s; then an error naming the member and quoting the tail of its log).
    pub fn start(spec: EtcdSpec) -> io::Result<Self> {
        validate(&spec)?;
        let id = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let token = format!("weir-{}-{pid}-{id}", spec.name);
        let (dir, ns, addrs) = match &spec.netns {
            None => (
                std::env::temp_dir().join(format!("weir-etcd-{}-{pid}-{id}", spec.name)),
                None,
                free_ports(spec.members)?,
            ),
            Some(name) => {
                let ns = if name.contains('/') {
                    PathBuf::from(name)
                } else {
                    netns::named_path(name)
                };
                let addrs = (0..spec.members)
                    .map(|i| {
                        let step = 10 * u16::try_from(i).unwrap_or(u16::MAX / 10);
                        let ip = spec.address.unwrap_or(Ipv4Addr::LOCALHOST);
                        (
                            SocketAddr::V4(SocketAddrV4::new(
                                ip,
                                NS_CLIENT_PORT.saturating_add(step),
                            )),
                            SocketAddr::V4(SocketAddrV4::new(
                                ip,
                                NS_PEER_PORT.saturating_add(step),
                            )),
                        )
                    })
                    .collect();
                // A fixed place: a crashed run's data must not become this cluster's.
                let dir = Path::new(LAB_RUN_DIR).join(format!("{}-etcd", spec.name));
                (dir, Some(ns), addrs)
            }
        };
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(context(e, &format!("remove {}", dir.display())));
            }
            _ => {}
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| context(e, &format!("create {}", dir.display())))?;
        let members = addrs
            .into_iter()
            .enumerate()
            .map(|(i, (client, peer))| Member {
                client,
                peer,
                data: dir.join(format!("m{i}")),
                log: dir.join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        // From here on a failure drops `cluster`, which kills what started and removes `dir`.
        let mut cluster = EtcdCluster {
            spec,
            dir,
            ns,
            token,
            members,
            spawner: Spawner::new()?,
        };
        // All members first: none is healthy before a quorum of them runs.
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for i in 0..cluster.members.len() {
            cluster.wait_healthy(i, deadline)?;
        }
        cluster.wait_for_leader(deadline.saturating_duration_since(Instant::now()))?;
        Ok(cluster)
    }

    /// Client URLs, e.g. `http://127.0.0.1:23791`: one per member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    /// The directory of the members' data (`m<i>/`) and logs (`m<i>.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name this cluster was started with.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// SIGKILL member `i` and reap it; its data directory stays for [`EtcdCluster::restart`].
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        let name = self.spec.name.clone();
        let member = self.member_mut(i)?;
        let Some(mut child) = member.child.take() else {
            return Err(io::Error::other(format!(
                "etcd {name} member m{i} is not running"
            )));
        };
        // `kill` fails only when the child was already reaped, which `child` would know.
        child
            .kill()
            .map_err(|e| context(e, &format!("kill etcd {name} member m{i}")))?;
        child
            .wait()
            .map_err(|e| context(e, &format!("reap etcd {name} member m{i}")))?;
        Ok(())
    }

    /// Start member `i` again on its data directory (the `--initial-cluster` flags are ignored
    /// then, so they are the first start's) and wait until it is healthy.
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        if self.member(i)?.child.is_some() {
            return Err(io::Error::other(format!(
                "etcd {} member m{i} is already running",
                self.spec.name
            )));
        }
        self.spawn(i)?;
        self.wait_healthy(i, Instant::now() + START_TIMEOUT)
    }

    /// Index of the current leader: the live member that says it is the leader (the highest
    /// term wins, should two say so). `None` while no live member confirms it leads — also
    /// while the survivors still name a leader that was killed and has not been replaced.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .filter_map(|i| {
                let s = self.status(i).ok()?;
                (s.leader != 0 && s.leader == s.member_id).then_some((s.raft_term, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// Wait until some live member leads (up to `timeout`); return its index.
    pub fn wait_for_leader(&self, timeout: Duration) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader() {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                let live: Vec<String> = (0..self.members.len())
                    .filter(|&i| self.members[i].child.is_some())
                    .map(|i| format!("m{i}"))
                    .collect();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "etcd {}: no leader within {:.1}s (live members: {})",
                        self.spec.name,
                        timeout.as_secs_f64(),
                        if live.is_empty() {
                            "none".to_string()
                        } else {
                            live.join(", ")
                        }
                    ),
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// The process id of member `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members.get(i)?.child.as_ref().map(Child::id)
    }

    fn member(&self, i: usize) -> io::Result<&Member> {
        let n = self.members.len();
        self.members.get(i).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("etcd {} has no member m{i} (it has {n})", self.spec.name),
            )
        })
    }

    fn member_mut(&mut self, i: usize) -> io::Result<&mut Member> {
        let n = self.members.len();
        let name = &self.spec.name;
        self.members.get_mut(i).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("etcd {name} has no member m{i} (it has {n})"),
            )
        })
    }

    /// Start member `i`'s process (not waiting for it).
    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let cmd = self.command(i)?;
        let child = self.spawner.spawn(cmd).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                " (install etcd-server: scripts/bootstrap.sh)"
            } else {
                ""
            };
            context(
                e,
                &format!(
                    "start {ETCD_BIN} for etcd {} member m{i}{hint}",
                    self.spec.name
                ),
            )
        })?;
        self.member_mut(i)?.child = Some(child);
        Ok(())
    }

    fn command(&self, i: usize) -> io::Result<Command> {
        let m = self.member(i)?;
        let cluster: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .map(|(j, m)| format!("m{j}=http://{}", m.peer))
            .collect();
        let client = format!("http://{}", m.client);
        let peer = format!("http://{}", m.peer);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| context(e, &format!("open {}", m.log.display())))?;
        let stderr = log.try_clone()?;
        let mut cmd = Command::new(ETCD_BIN);
        cmd.arg("--name")
            .arg(format!("m{i}"))
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // Fast elections: a test that kills the leader waits a fraction of a second. Not
            // faster: on a loaded machine members would depose each other by the second,
            // and every lease renewal during an election fails.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args([
                "--enable-v2=false",
                "--log-level",
                "warn",
                "--logger",
                "zap",
            ])
            .arg("--log-outputs")
            .arg(&m.log)
            .stdin(Stdio::null())
            // Flag errors and panics go to stderr, not to the zap log: the same file.
            .stdout(Stdio::null())
            .stderr(stderr);
        // An `ETCD_*` variable of the caller's would configure (or, shadowed by a flag, fail)
        // the member.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        if let Some(ns) = &self.ns {
            run_in_namespace(&mut cmd, ns)?;
        }
        let parent = std::process::id();
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Die with the spawner thread, hence with this process, even when it crashes.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before the signal was armed.
                if libc::getppid() != parent as libc::pid_t {
                    return Err(io::Error::other("the parent exited"));
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Poll member `i`'s `/health` until it says `true`; fail when it exits or at `deadline`.
    fn wait_healthy(&mut self, i: usize, deadline: Instant) -> io::Result<()> {
        loop {
            let health = self.request(i, "GET", "/health", "");
            if let Ok((200, body)) = &health
                && serde_json::from_str::<serde_json::Value>(body)
                    .is_ok_and(|v| v["health"].as_str() == Some("true"))
            {
                return Ok(());
            }
            let name = self.spec.name.clone();
            let member = self.member_mut(i)?;
            let Some(child) = member.child.as_mut() else {
                return Err(io::Error::other(format!(
                    "etcd {name} member m{i} is not running"
                )));
            };
            if let Some(status) = child.try_wait()? {
                member.child = None;
                return Err(io::Error::other(format!(
                    "etcd {name} member m{i} exited ({status}) before it was healthy; {}:\n{}",
                    member.log.display(),
                    tail(&member.log, LOG_TAIL)
                )));
            }
            if Instant::now() >= deadline {
                let last = match health {
                    Ok((code, body)) => format!("HTTP {code} {}", body.trim()),
                    Err(e) => e.to_string(),
                };
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "etcd {name} member m{i} ({}) was not healthy within {}s (last: {last}); {}:\n{}",
                        member.client,
                        START_TIMEOUT.as_secs(),
                        member.log.display(),
                        tail(&member.log, LOG_TAIL)
                    ),
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Member `i`'s view of the cluster (`Maintenance.Status` through the gRPC gateway).
    fn status(&self, i: usize) -> io::Result<Status> {
        let (code, body) = self.request(i, "POST", "/v3/maintenance/status", "{}")?;
        if code != 200 {
            return Err(io::Error::other(format!("status: HTTP {code} {body}")));
        }
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("status: {e}")))?;
        let field = |v: &serde_json::Value, what: &str| {
            number(v).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("status: no {what} in {body}"),
                )
            })
        };
        Ok(Status {
            member_id: field(&v["header"]["member_id"], "header.member_id")?,
            // A member without a leader leaves the field out (proto3 zero).
            leader: number(&v["leader"]).unwrap_or(0),
            raft_term: number(&v["raftTerm"])
                .or_else(|| number(&v["header"]["raft_term"]))
                .unwrap_or(0),
        })
    }

    /// One HTTP request to member `i`'s client URL, from inside its namespace.
    fn request(&self, i: usize, method: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
        let addr = self.member(i)?.client;
        match &self.ns {
            None => http(addr, method, path, body),
            Some(ns) => {
                let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
                netns::run_in(ns, move || http(addr, &method, &path, &body))?
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What `Maintenance.Status` says.
struct Status {
    member_id: u64,
    /// 0: no leader known.
    leader: u64,
    raft_term: u64,
}

/// The gateway writes 64-bit integers as strings; `etcdctl -w json` as numbers.
fn number(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// Spawns the members from one thread that lives as long as the cluster: `PR_SET_PDEATHSIG`
/// fires when the *thread* that forked a child ends, so a member started from a short-lived
/// thread (a `spawn_blocking` task, `netns::run_in`) would otherwise die with that thread.
struct Spawner {
    tx: Option<mpsc::Sender<SpawnRequest>>,
    thread: Option<thread::JoinHandle<()>>,
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

impl Spawner {
    fn new() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = thread::Builder::new()
            .name("weir-etcd".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map_err(|e| context(e, "start the etcd spawner thread"))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let gone = || io::Error::other("the etcd spawner thread is gone");
        let tx = self.tx.as_ref().ok_or_else(gone)?;
        let (reply, result) = mpsc::channel();
        tx.send((cmd, reply)).map_err(|_| gone())?;
        result.recv().map_err(|_| gone())?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn validate(spec: &EtcdSpec) -> io::Result<()> {
    let ok = !spec.name.is_empty()
        && spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "etcd cluster name {:?}: use letters, digits, '-' and '_'",
                spec.name
            ),
        ));
    }
    if spec.members == 0 || spec.members > 99 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("etcd {}: {} members (1 to 99)", spec.name, spec.members),
        ));
    }
    Ok(())
}

/// A client and a peer address on 127.0.0.1 for each of `n` members. All listeners stay open
/// until every port is taken, so no two are the same; a port can still be taken by someone else
/// between here and etcd's bind (then the member fails and says so).
fn free_ports(n: usize) -> io::Result<Vec<(SocketAddr, SocketAddr)>> {
    let listeners = (0..2 * n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| context(e, "find free ports on 127.0.0.1"))?;
    let addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<io::Result<Vec<_>>>()?;
    Ok(addrs.chunks(2).map(|p| (p[0], p[1])).collect())
}

/// A minimal HTTP/1.0 exchange: the server closes the connection after one response, whose body
/// is not chunked.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{method} {path}: not an HTTP response: {text:.200}"),
        )
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_string()))
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ETCDCTL_API=3 etcdctl --endpoints URL ARGS…`; its stdout, or a panic with its stderr.
    fn etcdctl(endpoint: &str, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint, "--command-timeout", "5s"])
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn one_member_serves_and_leaves_no_trace() {
        let c = EtcdCluster::start(EtcdSpec::local("unit1", 1)).expect("start etcd");
        let ep = c.endpoints();
        assert_eq!(ep.len(), 1);
        assert!(ep[0].starts_with("http://127.0.0.1:"), "{ep:?}");
        assert_eq!(c.leader(), Some(0));
        // Fails (non-zero exit) unless the member commits a proposal.
        etcdctl(&ep[0], &["endpoint", "health"]);
        etcdctl(&ep[0], &["put", "weir/k", "v1"]);
        assert_eq!(
            etcdctl(&ep[0], &["get", "weir/k", "--print-value-only"]),
            "v1"
        );
        let pid = c.pid(0).expect("a pid");
        let dir = c.dir().to_path_buf();
        assert!(dir.join("m0").is_dir());
        drop(c);
        assert!(!dir.exists(), "{} is left behind", dir.display());
        assert!(!alive(pid), "etcd {pid} is still running");
    }

    #[test]
    fn three_members_elect_a_new_leader_and_take_back_a_restarted_one() {
        let mut c = EtcdCluster::start(EtcdSpec::local("unit3", 3)).expect("start etcd");
        let ep = c.endpoints();
        assert_eq!(ep.len(), 3);
        let old = c.wait_for_leader(Duration::from_secs(5)).expect("a leader");
        let survivor = (old + 1) % 3;
        etcdctl(&ep[survivor], &["put", "weir/k", "before"]);

        let pid = c.pid(old).expect("a pid");
        c.kill(old).expect("kill the leader");
        assert_eq!(c.pid(old), None);
        assert!(!alive(pid), "killed etcd {pid} is still running");
        assert!(c.kill(old).is_err(), "killing a dead member must fail");
        let t = Instant::now();
        let new = c
            .wait_for_leader(Duration::from_secs(10))
            .expect("a new leader");
        assert_ne!(new, old);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
        etcdctl(&ep[new], &["put", "weir/k", "after"]);

        c.restart(old).expect("restart the old leader");
        assert!(c.pid(old).is_some());
        // It kept its data and caught up with what it missed.
        etcdctl(&ep[old], &["endpoint", "health"]);
        assert_eq!(
            etcdctl(&ep[old], &["get", "weir/k", "--print-value-only"]),
            "after"
        );
        assert!(c.leader().is_some());
        let pids: Vec<u32> = (0..3).filter_map(|i| c.pid(i)).collect();
        assert_eq!(pids.len(), 3);
        let dir = c.dir().to_path_buf();
        drop(c);
        assert!(!dir.exists(), "{} is left behind", dir.display());
        assert!(pids.iter().all(|&p| !alive(p)), "etcd left running");
    }

    #[test]
    fn bad_specs_are_refused() {
        for spec in [
            EtcdSpec::local("", 1),
            EtcdSpec::local("a/b", 1),
            EtcdSpec::local("ok", 0),
        ] {
            let e = EtcdCluster::start(spec).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
