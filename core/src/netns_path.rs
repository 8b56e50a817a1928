//! Which paths may name a workload's network namespace, as text: the default directories, the
//! normal form and the length limit. A leaf: the configuration checks `runner.netns_allow`
//! with it, and the runner checks each workload's path with it before opening anything.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Where the network namespaces of workloads may live.
pub const DEFAULT_ALLOWED_PREFIXES: [&str; 6] = [
    "/run/netns/",
    "/var/run/netns/",
    "/run/docker/netns/",
    "/var/run/docker/netns/",
    // containerd's CRI namespaces with `netns_mounts_under_state_dir`.
    "/run/containerd/",
    "/var/run/containerd/",
];

/// The longest workload namespace path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 256;

/// Why `path` is not an absolute, normalised path (no `.`, `..` or empty components, no NUL),
/// or `None`.
pub fn not_normalised(path: &Path) -> Option<String> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.first() != Some(&b'/') {
        return Some("it is not an absolute path".into());
    }
    if bytes.contains(&0) {
        return Some("it contains a NUL byte".into());
    }
    // Byte by byte: `Path::components` silently drops `.` and repeated slashes.
    for part in bytes[1..].split(|b| *b == b'/') {
        match part {
            b"" => return Some("it has an empty component (\"//\" or a trailing \"/\")".into()),
            b"." | b".." => {
                return Some(format!(
                    "it has a {:?} component (only normalised paths are accepted)",
                    OsStr::from_bytes(part)
                ));
            }
            _ => {}
        }
    }
    None
}
