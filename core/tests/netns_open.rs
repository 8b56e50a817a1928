//! The runner opens a workload's namespace from a path the host sent: only network namespaces
//! under the allowed directories, never blocking, never the machine's or the runner's own.
//!
//! Everything here runs in namespaces and files of the test's own; the machine's namespace is
//! only ever `stat`ed (through the opener's refusal), never entered.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::ScratchNs;
use weir::dataplane::netns::{self, NetnsError, NetnsPolicy, NsIdentity};

/// A directory of the test's own under /tmp, removed when dropped (a bind mount in it first).
struct ScratchDir {
    path: PathBuf,
    mounts: Vec<PathBuf>,
}

impl ScratchDir {
    fn new(tag: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the namespace integration tests need root"
        );
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("weir-t{}x{n}{tag}", std::process::id()));
        std::fs::create_dir(&path).unwrap();
        Self {
            path,
            mounts: Vec::new(),
        }
    }

    /// Only this directory is allowed.
    fn policy(&self) -> NetnsPolicy {
        NetnsPolicy {
            allowed_prefixes: vec![self.path.clone()],
            allow_proc_pids: false,
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `open_workload` on another thread: it must answer within a few seconds (a blocking open
/// would not). On a timeout `unblock` is run (to release the thread) and the test fails.
fn open_promptly(
    path: &Path,
    policy: &NetnsPolicy,
    unblock: impl FnOnce(),
) -> Result<(std::fs::File, NsIdentity), NetnsError> {
    let (tx, rx) = mpsc::channel();
    let (p, pol) = (path.to_path_buf(), policy.clone());
    std::thread::spawn(move || {
        let _ = tx.send(netns::open_workload(&p, &pol));
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(r) => r,
        Err(_) => {
            unblock();
            panic!("open_workload({}) blocked", path.display());
        }
    }
}

fn refusal(path: &Path, policy: &NetnsPolicy) -> (NetnsError, String) {
    let e = open_promptly(path, policy, || {}).expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{:?}", path.display().to_string())),
        "the message names the path: {msg}"
    );
    (e, msg)
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = ScratchDir::new("fifo");
    let fifo = dir.path.join("ns");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let unblock = {
        let fifo = fifo.clone();
        move || {
            // A writer releases a reader blocked in open(2).
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
        }
    };
    let e = open_promptly(&fifo, &dir.policy(), unblock).expect_err("refused");
    assert!(matches!(e, NetnsError::NotNamespace { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("is not a namespace (a fifo)"), "{msg}");
}

#[test]
fn regular_files_directories_and_symlinks_are_refused() {
    let dir = ScratchDir::new("files");
    let file = dir.path.join("file");
    std::fs::write(&file, b"not a namespace").unwrap();
    let sub = dir.path.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let link = dir.path.join("link");
    std::os::unix::fs::symlink("/proc/1/ns/net", &link).unwrap();
    let (e, msg) = refusal(&file, &dir.policy());
    assert!(matches!(e, NetnsError::NotNamespace { .. }), "{msg}");
    assert!(msg.contains("(a regular file)"), "{msg}");
    let (_, msg) = refusal(&sub, &dir.policy());
    assert!(msg.contains("(a directory)"), "{msg}");
    // A symlink is not followed, not even to a namespace.
    let (_, msg) = refusal(&link, &dir.policy());
    assert!(msg.contains("a symbolic link to /proc/1/ns/net"), "{msg}");
    let (_, msg) = refusal(&dir.path.join("missing"), &dir.policy());
    assert!(msg.contains("cannot open it"), "{msg}");
}

#[test]
fn paths_outside_the_allowed_directories_and_dot_dot_paths_are_refused() {
    let policy = NetnsPolicy::default();
    for p in [
        "/tmp/ns",
        "/proc/self/ns/net",
        "/proc/self/ns/mnt",
        "/run/netns/../netns/x",
        "/run/netns/./x",
        "/run/netns//x",
        "run/netns/x",
    ] {
        let (e, msg) = refusal(Path::new(p), &policy);
        assert!(matches!(e, NetnsError::NotAllowed { .. }), "{p}: {msg}");
        assert!(
            msg.contains("allowed are /run/netns/NAME") && msg.contains("/proc/PID/ns/net"),
            "{p}: the message says what is allowed: {msg}"
        );
    }
    let (_, msg) = refusal(Path::new("/run/netns/../../proc/1/ns/net"), &policy);
    assert!(msg.contains("\"..\" component"), "{msg}");
}

#[test]
fn other_kinds_of_namespace_are_refused() {
    // Its own mount namespace, even where /proc/self/ns/ is allowed: a magic link, refused
    // before it is opened for anything but O_PATH (never entered).
    let proc_self = NetnsPolicy {
        allowed_prefixes: vec![PathBuf::from("/proc/self/ns")],
        allow_proc_pids: false,
    };
    let (e, msg) = refusal(Path::new("/proc/self/ns/mnt"), &proc_self);
    assert!(matches!(e, NetnsError::NotNamespace { .. }), "{msg}");
    assert!(msg.contains("a symbolic link to mnt:["), "{msg}");

    // A bind-mounted namespace file of another type: a UTS namespace of a thread's own.
    let mut dir = ScratchDir::new("uts");
    let target = dir.path.join("uts");
    std::fs::write(&target, b"").unwrap();
    let t = target.clone();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS).unwrap();
        nix::mount::mount(
            Some("/proc/thread-self/ns/uts"),
            &t,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    })
    .join()
    .unwrap();
    dir.mounts.push(target.clone());
    let (e, msg) = refusal(&target, &dir.policy());
    assert!(matches!(e, NetnsError::WrongType { .. }), "{msg}");
    assert!(
        msg.contains("is a uts namespace, not a network namespace"),
        "{msg}"
    );
}

#[test]
fn the_machines_and_the_runners_own_namespaces_are_refused() {
    // The test process's namespace is the machine's: the opener `stat`s it and refuses.
    let me = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
    let (e, msg) = refusal(&me, &NetnsPolicy::default());
    assert!(matches!(e, NetnsError::Initial { .. }), "{msg}");
    assert!(msg.contains("machine's initial network namespace"), "{msg}");

    // A runner inside a namespace of its own is refused that namespace.
    let ns = ScratchNs::new("own");
    let path = ns.path.clone();
    let r = netns::run_in(&ns.path, move || {
        netns::open_workload(&path, &NetnsPolicy::default()).map(|(_, id)| id)
    })
    .unwrap();
    let e = r.expect_err("its own namespace is refused");
    assert!(matches!(e, NetnsError::Runner { .. }), "{e}");
    assert!(e.to_string().contains("the runner's own network namespace"));
}

#[test]
fn a_workload_namespace_is_accepted_and_identified() {
    let ns = ScratchNs::new("ok");
    let (file, id) = open_promptly(&ns.path, &NetnsPolicy::default(), || {}).unwrap();
    assert_eq!(id, netns::identity(&ns.path).unwrap());
    assert_eq!(id, netns::identity_of(&file).unwrap());
    assert_eq!(netns::inode(&ns.path).unwrap(), id.ino);
    let named = ns.path.clone();
    assert_eq!(
        netns::identity(&named).unwrap(),
        id,
        "identity() is stable while the namespace lives"
    );

    // Deleted and created again at the same path: another namespace. (`file` keeps the first
    // one alive meanwhile, so the kernel cannot hand its inode number to the second.)
    let name = ns.name.clone();
    drop(ns);
    assert!(netns::identity(&named).is_err(), "the path is gone");
    let again = ScratchNs {
        path: netns::create(&name).unwrap(),
        name,
    };
    let id2 = netns::identity(&again.path).unwrap();
    assert_ne!(id2, id);
    let (_, opened) = netns::open_workload(&again.path, &NetnsPolicy::default()).unwrap();
    assert_eq!(opened, id2);
    drop(file);
}
