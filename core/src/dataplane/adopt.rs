//! Adopting containers Weir did not attach (a KohakuRiver overlay's, whose interfaces are its
//! only record): find them on a bridge, take their bridge port over in place, give it back.
//!
//! A found container keeps everything: its namespace, its interface, address, MAC and routes.
//! Only its bridge-side veth changes: it is renamed to Weir's name for the workload and gets
//! Weir's alias, so from then on it is a workload like any other (listed, audited, detached).
//! Nothing is re-created, so no flow is cut (the port is down for the rename, a few ms).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::attach::ALIAS_PREFIX;
use super::netlink::{Link, Netlink};
use super::netns::{self, NetnsPolicy, NsIdentity};
use super::{DataplaneError, Result};

/// A container on a bridge that Weir did not attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignPort {
    /// The bridge-side veth's name and index.
    pub port: String,
    pub port_index: u32,
    /// A path of the container's network namespace that the runner's policy admits.
    pub netns: PathBuf,
    /// Its interface there, and that interface's address on the runner's subnet and MAC.
    pub ifname: String,
    pub addr: Ipv4Net,
    pub mac: [u8; 6],
}

/// A bridge port that cannot be adopted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unadoptable {
    pub port: String,
    pub reason: String,
}

/// How deep below an allowed directory namespace files are looked for (containerd keeps them
/// at `/run/containerd/…/<id>/netns`-like depths; Docker and `ip netns` directly inside).
const SEARCH_DEPTH: usize = 4;

/// Every veth port of `bridge` that is not Weir's, with the container at its other end when one
/// is found in a namespace `policy` admits and holds an address of `subnet`.
pub async fn discover(
    nl: &Netlink,
    bridge: u32,
    subnet: Ipv4Net,
    policy: &NetnsPolicy,
) -> Result<(Vec<ForeignPort>, Vec<Unadoptable>)> {
    let ports: BTreeMap<u32, Link> = nl
        .links()
        .await?
        .into_iter()
        .filter(|l| l.master == Some(bridge) && l.kind.as_deref() == Some("veth"))
        .filter(|l| {
            !l.alias
                .as_deref()
                .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
        })
        .map(|l| (l.index, l))
        .collect();
    let mut found = Vec::new();
    let mut left: BTreeSet<u32> = ports.keys().copied().collect();
    let mut unadoptable = Vec::new();
    for l in ports.values() {
        if l.peer_netnsid.is_none() {
            unadoptable.push(Unadoptable {
                port: l.name.clone(),
                reason: "its other end is in the runner's own namespace".into(),
            });
            left.remove(&l.index);
        }
    }
    for path in candidate_namespaces(policy) {
        if left.is_empty() {
            break;
        }
        let Ok((file, _)) = netns::open_workload(&path, policy) else {
            continue;
        };
        // Which of the ports lead into this namespace: by the id the runner's namespace knows
        // it by (interface indexes alone repeat across namespaces built alike).
        let Ok(Some(nsid)) = nl.nsid_of(&file).await else {
            continue;
        };
        if !ports
            .values()
            .any(|p| p.peer_netnsid == Some(nsid) && left.contains(&p.index))
        {
            continue;
        }
        let held = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let Ok(inner) = Netlink::in_namespace(&held) else {
            continue;
        };
        let Ok(links) = inner.links().await else {
            continue;
        };
        for peer in links.iter().filter(|p| p.kind.as_deref() == Some("veth")) {
            let Some(port_index) = peer.peer_index.filter(|i| left.contains(i)) else {
                continue;
            };
            let port = &ports[&port_index];
            // Both ends name each other: this is the pair (an index alone may repeat across
            // namespaces).
            if port.peer_netnsid != Some(nsid) || port.peer_index != Some(peer.index) {
                continue;
            }
            left.remove(&port_index);
            let addrs = inner.addrs(peer.index).await.unwrap_or_default();
            match (addrs.iter().find(|a| subnet.contains(&a.addr())), peer.mac) {
                (Some(addr), Some(mac)) => found.push(ForeignPort {
                    port: port.name.clone(),
                    port_index,
                    netns: path.clone(),
                    ifname: peer.name.clone(),
                    addr: Ipv4Net::new(addr.addr(), subnet.prefix_len()).unwrap_or(*addr),
                    mac,
                }),
                _ => unadoptable.push(Unadoptable {
                    port: port.name.clone(),
                    reason: format!(
                        "{} in {} has no address in {subnet}",
                        peer.name,
                        path.display()
                    ),
                }),
            }
        }
    }
    for index in left {
        unadoptable.push(Unadoptable {
            port: ports[&index].name.clone(),
            reason: format!(
                "its other end is in a namespace found under none of the allowed paths ({})",
                policy.describe()
            ),
        });
    }
    Ok((found, unadoptable))
}

/// Namespace files the policy admits, each namespace once: files below the allowed
/// directories first (stable paths), then `/proc/<pid>/ns/net` if pids are allowed.
fn candidate_namespaces(policy: &NetnsPolicy) -> Vec<PathBuf> {
    let mut seen: BTreeSet<NsIdentity> = BTreeSet::new();
    // The machine's and the runner's own namespaces are never candidates.
    for own in ["/proc/1/ns/net", "/proc/self/ns/net"] {
        if let Ok(id) = netns::identity(Path::new(own)) {
            seen.insert(id);
        }
    }
    let mut files = Vec::new();
    for dir in &policy.allowed_prefixes {
        walk(dir, SEARCH_DEPTH, &mut files);
    }
    if policy.allow_proc_pids
        && let Ok(entries) = std::fs::read_dir("/proc")
    {
        let mut pids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        files.extend(
            pids.into_iter()
                .map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))),
        );
    }
    files
        .into_iter()
        .filter(|f| netns::identity(f).is_ok_and(|id| seen.insert(id)))
        .collect()
}

/// Regular-looking files below `dir` (not following symlinks), `depth` levels down.
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            if depth > 0 {
                walk(&e.path(), depth - 1, out);
            }
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

/// Take the foreign port `port` of bridge `bridge` over as workload interface `name` with
/// `alias`: down, renamed, aliased, up. Idempotent: a port already taken over (`name` carries
/// `alias`) is left as it is. Returns the index of the bridge it is on.
pub async fn take_over(
    nl: &Netlink,
    port: &str,
    name: &str,
    alias: &str,
    bridge: &str,
) -> Result<u32> {
    let bridge = nl
        .link(bridge)
        .await?
        .ok_or_else(|| DataplaneError::Invalid(format!("bridge {bridge} does not exist")))?
        .index;
    if let Some(l) = nl.link(name).await?
        && l.alias.as_deref() == Some(alias)
        && l.master == Some(bridge)
    {
        return Ok(bridge);
    }
    let l = nl.link(port).await?.ok_or_else(|| {
        DataplaneError::Invalid(format!("adopt_port: {port} does not exist on this runner"))
    })?;
    if l.kind.as_deref() != Some("veth") || l.master != Some(bridge) || l.peer_netnsid.is_none() {
        return Err(DataplaneError::Invalid(format!(
            "adopt_port: {port} is not a veth port of the network's bridge with its other end in a container"
        )));
    }
    if let Some(a) = l.alias.as_deref().filter(|a| a.starts_with(ALIAS_PREFIX)) {
        return Err(DataplaneError::Invalid(format!(
            "adopt_port: {port} is Weir's already ({a})"
        )));
    }
    crate::telemetry::kernel("netlink.adopt", async {
        nl.set_down(l.index).await?;
        let renamed = async {
            nl.rename(l.index, name).await?;
            nl.set_alias(l.index, alias).await
        }
        .await;
        // Up again whatever happened: the container's traffic must not stay cut.
        let up = nl.set_up(l.index).await;
        renamed.and(up)
    })
    .await?;
    Ok(bridge)
}

/// Give a port taken over back as it was found, under a veth name of its own (`veth` + 7 hex
/// digits, like Docker's), without Weir's alias: the container keeps its interface.
pub async fn give_back(nl: &Netlink, index: u32, name: &str) -> Result<()> {
    let back = format!("veth{:07x}", fnv(name) & 0x0fff_ffff);
    nl.set_down(index).await?;
    let renamed = async {
        nl.rename(index, &back).await?;
        nl.set_alias(index, "").await
    }
    .await;
    let up = nl.set_up(index).await;
    renamed.and(up)
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Whether `ip` is in use on bridge `bridge` by something other than `own` (the MAC the new
/// interface will have): a MAC the neighbour table knows for `ip` that is behind one of the
/// bridge's ports now (a neighbour entry outlives the interface it learned; the bridge's
/// forwarding entry goes with its port, so a detached workload's address is not held against
/// the next one).
pub async fn in_use_by(
    nl: &Netlink,
    bridge: u32,
    ip: Ipv4Addr,
    own: [u8; 6],
) -> Result<Option<[u8; 6]>> {
    let Some(mac) = nl.neighbour_mac(bridge, ip).await?.filter(|m| *m != own) else {
        return Ok(None);
    };
    let behind = nl.bridge_macs(bridge).await?;
    Ok(behind.contains(&mac).then_some(mac))
}
