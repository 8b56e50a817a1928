//! Network namespaces: open them, run code inside them, create and delete named ones.
//!
//! A socket belongs to the namespace of the thread that creates it, so code that needs a socket
//! in another namespace runs on a short-lived thread that has `setns()`ed into it — never on a
//! tokio worker, whose namespace must not change.
//!
//! A workload's namespace comes from the host as a path; [`open_workload`] is the only way the
//! runner opens one: it never blocks (a FIFO or a device at the path cannot wedge the runner),
//! accepts only paths under [`NetnsPolicy`]'s prefixes, only network namespaces, and never the
//! machine's or the runner's own.

use crate::netns_path::{DEFAULT_ALLOWED_PREFIXES, MAX_PATH_LEN, not_normalised};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::Mode;

/// Where `ip netns` keeps named namespaces; ours live there too so `ip netns` sees them.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The path of a named namespace.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Run `f` on a fresh thread that has entered the network namespace at `ns`, and return its
/// result. The calling thread's namespace is never changed.
pub fn run_in<F, R>(ns: &Path, f: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    // Non-blocking: a FIFO at `ns` must not hang the caller (entering it then fails instead).
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(ns)
        .map_err(|e| with_path(e, "open network namespace", ns))?;
    let ns_display = ns.to_path_buf();
    std::thread::Builder::new()
        .name("weir-netns".into())
        .spawn(move || -> io::Result<R> {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| with_path(e.into(), "enter network namespace", &ns_display))?;
            Ok(f())
        })?
        .join()
        .map_err(|_| io::Error::other("thread inside a network namespace panicked"))?
}

/// Create a named network namespace (like `ip netns add`), with loopback up and IPv6 off (the
/// lab and the tests are IPv4; IPv6 autoconfiguration would only add noise to counters).
/// Fails if it exists.
pub fn create(name: &str) -> io::Result<PathBuf> {
    validate_name(name)?;
    std::fs::create_dir_all(NETNS_RUN_DIR)?;
    run_dir_mounted()?;
    let path = named_path(name);
    // `create_new` makes two concurrent creators of one name fail instead of sharing it.
    File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| with_path(e, "create namespace file", &path))?;
    let target = path.clone();
    let result = std::thread::Builder::new()
        .name("weir-netns-new".into())
        .spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io::Error::from)
        })?
        .join()
        .map_err(|_| io::Error::other("namespace creation thread panicked"))?;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&path);
        return Err(with_path(e, "bind-mount new namespace", &path));
    }
    // A new namespace's loopback is down; nearly everything expects it up.
    run_in(&path, || {
        set_loopback_up()?;
        for knob in ["all", "default"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), b"1");
        }
        Ok::<(), io::Error>(())
    })??;
    Ok(path)
}

/// Make [`NETNS_RUN_DIR`] a shared mount of its own, as `ip netns add` does, before the first
/// namespace is mounted in it. Otherwise the first tool that does it later (podman, netavark,
/// `ip netns`) bind-mounts the directory over itself, and every namespace mounted before is
/// hidden under that mount: its file can then be neither unmounted nor removed.
fn run_dir_mounted() -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    let dir = Path::new(NETNS_RUN_DIR);
    let share = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => Ok(()),
        // Not a mount point yet.
        Err(nix::errno::Errno::EINVAL) => mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| share())
        .map_err(|e| with_path(e.into(), "make a shared mount of", dir)),
        Err(e) => Err(with_path(e.into(), "make a shared mount of", dir)),
    }
}

/// Delete a named namespace (like `ip netns delete`). Missing namespaces are not an error.
pub fn delete(name: &str) -> io::Result<()> {
    validate_name(name)?;
    let path = named_path(name);
    if !path.exists() {
        return Ok(());
    }
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(with_path(e.into(), "unmount namespace", &path)),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(with_path(e, "remove namespace file", &path)),
    }
}

/// Named namespaces whose name starts with `prefix`.
pub fn list(prefix: &str) -> io::Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// The inode identifying the namespace at `path` (equal inodes = same namespace).
pub fn inode(path: &Path) -> io::Result<u64> {
    Ok(identity(path)?.ino)
}

/// Which namespace a namespace file is: its device and inode (equal identities = the same
/// namespace, for as long as it lives; a namespace created later at the same path differs).
///
/// The kernel may give a freed namespace's inode number to a new one, so an identity proves
/// "still the same namespace" only while the first one is known to be alive (open somewhere,
/// or with the workload's interface in it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NsIdentity {
    pub dev: u64,
    pub ino: u64,
}

impl fmt::Display for NsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}] (device {})", self.ino, self.dev)
    }
}

impl NsIdentity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The identity of the namespace at `path`, by `stat` alone: never opens it, so it never blocks
/// and never enters anything. For later checks that a path still holds the same namespace (it
/// does not check that the path is a namespace: [`open_workload`] does).
pub fn identity(path: &Path) -> io::Result<NsIdentity> {
    std::fs::metadata(path)
        .map(|m| NsIdentity::of(&m))
        .map_err(|e| with_path(e, "stat namespace", path))
}

/// The identity of an open namespace file.
pub fn identity_of(file: &File) -> io::Result<NsIdentity> {
    file.metadata().map(|m| NsIdentity::of(&m))
}

impl NetnsPolicy {
    /// The runner's configured policy (`runner.netns_allow`, `runner.netns_allow_pids`).
    pub fn from_config(c: &crate::config::RunnerConfig) -> Self {
        Self {
            allowed_prefixes: c.netns_allow.clone(),
            allow_proc_pids: c.netns_allow_pids,
        }
    }
}

/// Which paths [`open_workload`] accepts as a workload's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsPolicy {
    /// Absolute directories; a namespace file must lie (anywhere) below one of them.
    pub allowed_prefixes: Vec<PathBuf>,
    /// Also accept `/proc/<pid>/ns/net`.
    pub allow_proc_pids: bool,
}

impl Default for NetnsPolicy {
    fn default() -> Self {
        Self {
            allowed_prefixes: DEFAULT_ALLOWED_PREFIXES.iter().map(PathBuf::from).collect(),
            allow_proc_pids: true,
        }
    }
}

impl NetnsPolicy {
    /// What this policy allows, for error messages.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .allowed_prefixes
            .iter()
            .map(|p| {
                let mut s = p.display().to_string();
                if !s.ends_with('/') {
                    s.push('/');
                }
                format!("{s}NAME")
            })
            .collect();
        if self.allow_proc_pids {
            parts.push("/proc/PID/ns/net".into());
        }
        if parts.is_empty() {
            "nothing (runner.netns_allow is empty and runner.netns_allow_pids is false)".into()
        } else {
            parts.join(", ")
        }
    }

    /// Why `path` is refused, or `None` when it is allowed. Looks at the text only.
    fn refusal(&self, path: &Path) -> Option<String> {
        let bytes = path.as_os_str().as_bytes();
        if bytes.len() > MAX_PATH_LEN {
            return Some(format!(
                "it is {} bytes long (at most {MAX_PATH_LEN})",
                bytes.len()
            ));
        }
        if let Some(why) = not_normalised(path) {
            return Some(why);
        }
        if self.allow_proc_pids && is_proc_pid_net(path) {
            return None;
        }
        let below = |prefix: &PathBuf| {
            path.starts_with(prefix) && path.components().count() > prefix.components().count()
        };
        if self.allowed_prefixes.iter().any(below) {
            None
        } else {
            Some("it is not below an allowed directory".into())
        }
    }
}

/// `/proc/<pid>/ns/net` with `pid` a positive decimal number without leading zeros.
fn is_proc_pid_net(path: &Path) -> bool {
    let parts: Vec<Component<'_>> = path.components().collect();
    let [
        Component::RootDir,
        Component::Normal(proc),
        Component::Normal(pid),
        Component::Normal(ns),
        Component::Normal(net),
    ] = parts.as_slice()
    else {
        return false;
    };
    let pid = pid.as_bytes();
    *proc == "proc"
        && *ns == "ns"
        && *net == "net"
        && !pid.is_empty()
        && pid.len() <= 10
        && pid[0] != b'0'
        && pid.iter().all(u8::is_ascii_digit)
}

/// Why a path is not accepted as a workload's network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path:?} is refused: {why}; allowed are {allowed}")]
    NotAllowed {
        path: PathBuf,
        why: String,
        allowed: String,
    },
    #[error(
        "network namespace {path:?} is refused: it is not a namespace ({kind}); a workload's netns must be a namespace file (a bind mount of one, or /proc/PID/ns/net)"
    )]
    NotNamespace { path: PathBuf, kind: String },
    #[error(
        "network namespace {path:?} is refused: it is a {kind} namespace, not a network namespace"
    )]
    WrongType { path: PathBuf, kind: String },
    #[error(
        "network namespace {path:?} is refused: it is the machine's initial network namespace (that of pid 1); workloads must have namespaces of their own"
    )]
    Initial { path: PathBuf },
    #[error(
        "network namespace {path:?} is refused: it is the runner's own network namespace; workloads must have namespaces of their own"
    )]
    Runner { path: PathBuf },
    #[error("network namespace {path:?}: cannot {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Open the network namespace of a workload at `path`, as [`NetnsPolicy`] allows, without ever
/// blocking: the path is checked as text, opened `O_PATH` (a FIFO or device does not block and
/// nothing of it runs; a final symlink is not followed except `/proc/<pid>/ns/net`'s), checked
/// to be on nsfs and to be neither the machine's initial network namespace nor the runner's own
/// (compared by `stat`: those are never opened further), then re-opened for reading through the
/// `O_PATH` descriptor (the same inode) and checked to be a network namespace. Returns the open
/// namespace (for `setns` or a veth's peer) and its identity.
pub fn open_workload(path: &Path, policy: &NetnsPolicy) -> Result<(File, NsIdentity), NetnsError> {
    if let Some(why) = policy.refusal(path) {
        return Err(NetnsError::NotAllowed {
            path: path.to_path_buf(),
            why,
            allowed: policy.describe(),
        });
    }
    let io_err = |what: &'static str| {
        move |source: io::Error| NetnsError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    // A bind-mounted namespace file is never a symlink; `/proc/<pid>/ns/net` is a magic link
    // that must be followed.
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if !is_proc_pid_net(path) {
        flags |= OFlag::O_NOFOLLOW;
    }
    let handle: OwnedFd = nix::fcntl::open(path, flags, Mode::empty())
        .map_err(|e| io_err("open it (O_PATH)")(e.into()))?;
    let fs = nix::sys::statfs::fstatfs(&handle).map_err(|e| io_err("statfs it")(e.into()))?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        let kind = File::from(handle)
            .metadata()
            .map(|m| file_kind(&m))
            .unwrap_or("of unknown type");
        let kind = match (kind, std::fs::read_link(path)) {
            ("a symbolic link", Ok(to)) => format!("a symbolic link to {}", to.display()),
            (kind, _) => kind.to_string(),
        };
        return Err(NetnsError::NotNamespace {
            path: path.to_path_buf(),
            kind,
        });
    }
    // Before it is opened for anything but O_PATH: the machine's and the runner's own
    // namespaces are only ever `stat`ed.
    let st = nix::sys::stat::fstat(&handle).map_err(|e| io_err("stat it")(e.into()))?;
    let id = NsIdentity {
        dev: st.st_dev,
        ino: st.st_ino,
    };
    if is_initial(id) {
        return Err(NetnsError::Initial {
            path: path.to_path_buf(),
        });
    }
    let own = identity(Path::new("/proc/self/ns/net")).map_err(io_err(
        "compare it with the runner's (stat /proc/self/ns/net)",
    ))?;
    // The calling thread's, too (it may have entered another namespace than the process's).
    let thread = identity(Path::new("/proc/thread-self/ns/net")).unwrap_or(own);
    if id == own || id == thread {
        return Err(NetnsError::Runner {
            path: path.to_path_buf(),
        });
    }
    // Safe to open for reading now: an nsfs inode, pinned by `handle`, so the same one.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .map_err(io_err("open it for reading"))?;
    drop(handle);
    let nstype = ns_type(&file).map_err(io_err("ask its namespace type (NS_GET_NSTYPE)"))?;
    if nstype != libc::CLONE_NEWNET {
        return Err(NetnsError::WrongType {
            path: path.to_path_buf(),
            kind: ns_type_name(nstype),
        });
    }
    Ok((file, id))
}

/// The inode number of the initial network namespace on kernels that give initial namespaces
/// fixed numbers (`PROC_NET_INIT_INO`, 6.x). Never a namespace's number on older kernels: they
/// hand out numbers from `0xF0000000` up.
const PROC_NET_INIT_INO: u64 = 0xEFFF_FFF9;

/// Whether `id` is the machine's initial network namespace: the one pid 1 is in (only
/// `stat`ed), or the one with the initial namespace's fixed inode number — which also answers
/// where pid 1's namespace files cannot be read (pid 1 not dumpable, or in another user
/// namespace).
fn is_initial(id: NsIdentity) -> bool {
    if id.ino == PROC_NET_INIT_INO {
        return true;
    }
    match identity(Path::new("/proc/1/ns/net")) {
        Ok(initial) => initial == id,
        Err(e) => {
            tracing::debug!(error = %e, "cannot stat /proc/1/ns/net; relying on the initial namespace's fixed inode number");
            false
        }
    }
}

/// The `CLONE_NEW*` type of an open namespace file.
fn ns_type(file: &File) -> io::Result<libc::c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the open descriptor, which `file`
    // keeps open for the duration of the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn ns_type_name(nstype: libc::c_int) -> String {
    match nstype {
        libc::CLONE_NEWNS => "mnt".into(),
        libc::CLONE_NEWPID => "pid".into(),
        libc::CLONE_NEWUTS => "uts".into(),
        libc::CLONE_NEWIPC => "ipc".into(),
        libc::CLONE_NEWUSER => "user".into(),
        libc::CLONE_NEWCGROUP => "cgroup".into(),
        libc::CLONE_NEWNET => "net".into(),
        0x80 => "time".into(),
        other => format!("type {other:#x}"),
    }
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "a fifo"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "of unknown type"
    }
}

fn set_loopback_up() -> io::Result<()> {
    // SIOCSIFFLAGS on "lo" through a throwaway socket: the simplest way without a runtime.
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: `req` is a valid ifreq and the socket is open for the duration of both calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn validate_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() > 200 || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("namespace name {name:?} must be 1 to 200 bytes without '/'"),
        ));
    }
    Ok(())
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &str) -> Option<String> {
        NetnsPolicy::default().refusal(Path::new(p))
    }

    #[test]
    fn the_default_policy_allows_the_usual_namespace_directories() {
        for p in [
            "/run/netns/a",
            "/var/run/netns/cni-1234-abcd",
            "/run/docker/netns/0123abcd",
            "/var/run/docker/netns/default",
            "/run/containerd/io.containerd.grpc.v1.cri/netns/cni-x",
            "/var/run/containerd/x",
            "/proc/1234/ns/net",
            "/proc/1/ns/net",
        ] {
            assert_eq!(refused(p), None, "{p}");
        }
    }

    #[test]
    fn paths_outside_the_prefixes_or_not_normalised_are_refused() {
        for (p, why) in [
            ("run/netns/a", "not an absolute path"),
            ("/run/netns", "not below an allowed directory"),
            ("/run/netns/", "empty component"),
            ("/run/netns//a", "empty component"),
            ("/run/netns/a/", "empty component"),
            ("/run/netns/../../proc/1/ns/net", "\"..\" component"),
            ("/run/netns/./a", "\".\" component"),
            ("/run/netnsx/a", "not below an allowed directory"),
            ("/etc/passwd", "not below an allowed directory"),
            ("/proc/self/ns/net", "not below an allowed directory"),
            ("/proc/thread-self/ns/net", "not below an allowed directory"),
            ("/proc/0/ns/net", "not below an allowed directory"),
            ("/proc/012/ns/net", "not below an allowed directory"),
            ("/proc/12/ns/mnt", "not below an allowed directory"),
            ("/proc/12/ns/net/x", "not below an allowed directory"),
            ("/proc/+12/ns/net", "not below an allowed directory"),
            ("/proc/12345678901/ns/net", "not below an allowed directory"),
        ] {
            let got = refused(p).unwrap_or_else(|| panic!("{p} was allowed"));
            assert!(got.contains(why), "{p}: {got}");
        }
        let long = format!("/run/netns/{}", "a".repeat(250));
        assert!(refused(&long).unwrap().contains("at most 256"));
        assert_eq!(refused(&format!("/run/netns/{}", "a".repeat(245))), None);
    }

    #[test]
    fn pids_can_be_refused_and_prefixes_replaced() {
        let p = NetnsPolicy {
            allowed_prefixes: vec![PathBuf::from("/srv/ns")],
            allow_proc_pids: false,
        };
        assert!(p.refusal(Path::new("/proc/12/ns/net")).is_some());
        assert!(p.refusal(Path::new("/run/netns/a")).is_some());
        assert_eq!(p.refusal(Path::new("/srv/ns/a")), None);
        assert_eq!(p.describe(), "/srv/ns/NAME");
        let none = NetnsPolicy {
            allowed_prefixes: vec![],
            allow_proc_pids: false,
        };
        assert!(none.describe().starts_with("nothing"));
    }

    #[test]
    fn a_refusal_names_the_path_the_reason_and_what_is_allowed() {
        let e = open_workload(Path::new("/tmp/x"), &NetnsPolicy::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\"/tmp/x\""), "{msg}");
        assert!(msg.contains("not below an allowed directory"), "{msg}");
        assert!(
            msg.contains("/run/netns/NAME") && msg.contains("/proc/PID/ns/net"),
            "{msg}"
        );
    }
}
