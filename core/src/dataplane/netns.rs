//! Network namespaces: open them, run code inside them, create and delete named ones.
//!
//! A socket belongs to the namespace of the thread that creates it, so code that needs a socket
//! in another namespace runs on a short-lived thread that has `setns()`ed into it — never on a
//! tokio worker, whose namespace must not change.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns, unshare};

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
    let file = File::open(ns).map_err(|e| with_path(e, "open network namespace", ns))?;
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
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.ino())
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
