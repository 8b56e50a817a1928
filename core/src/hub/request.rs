//! Requests as the hub takes them: each `weir.v1` request parsed once, at the API edge, into
//! checked values (a workload id that is a safe name, an absolute namespace reference, bounded
//! labels, an address or a token). The hub's rules see only these.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use weir_proto::v1 as pb;

use super::{HubError, brief, check_labels, check_netns, check_workload_id};
use crate::store::SCHEDULER_ORIGIN;

/// Where a new workload's address comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressSource {
    /// The next free address (or the allocator plugin's choice).
    Next,
    Requested(Ipv4Addr),
    /// A reservation's token (verified when it is used).
    Reservation(String),
}

/// `AttachWorkload`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub runner: String,
    pub workload_id: String,
    /// As asked: `""` is the primary network (resolved by the hub, which knows the networks).
    pub network: String,
    /// The namespace (`/proc/<pid>/ns/net` for a pid); empty for a VM.
    pub netns: PathBuf,
    pub vm: bool,
    pub labels: BTreeMap<String, String>,
    pub address: AddressSource,
    /// Who attaches (see [`check_origin`]).
    pub origin: String,
    /// The interface name asked for inside the namespace; `None`: the hub picks `eth<N>`.
    pub ifname: Option<String>,
    /// Handed off to the engine (Docker): no namespace; the container end of the pair is left
    /// in the runner's namespace for the engine to move.
    pub handoff: bool,
    /// An existing bridge port the runner takes over in place (a KohakuRiver container's),
    /// and the MAC its container interface has.
    pub adopt: Option<Adopt>,
}

/// A container adopted in place: its bridge port and its interface's MAC (both stay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopt {
    pub port: String,
    pub mac: String,
}

impl AttachRequest {
    /// Check every field; the first bad one is named in the error.
    pub fn parse(req: pb::AttachWorkloadRequest) -> Result<Self, HubError> {
        let workload_id = check_workload_id(&req.workload_id)?;
        let vm = req.kind == pb::WorkloadKind::Vm as i32;
        let netns = check_netns(vm, &req.netns, req.pid)?;
        let labels: BTreeMap<String, String> = req.labels.into_iter().collect();
        check_labels(&labels, "labels")?;
        let address = match (req.requested_ip.trim(), req.reservation_token.trim()) {
            ("", "") => AddressSource::Next,
            (ip, "") => AddressSource::Requested(ip.parse().map_err(|_| {
                HubError::InvalidArgument(format!(
                    "requested_ip: {} is not an IPv4 address",
                    brief(ip)
                ))
            })?),
            ("", token) => AddressSource::Reservation(token.to_string()),
            _ => {
                return Err(HubError::InvalidArgument(
                    "requested_ip and reservation_token: give one of them, not both".into(),
                ));
            }
        };
        Ok(Self {
            runner: req.runner,
            workload_id,
            network: req.network,
            netns,
            vm,
            labels,
            address,
            origin: SCHEDULER_ORIGIN.into(),
            ifname: None,
            handoff: false,
            adopt: None,
        })
    }

    /// A runner's relayed `Local.Attach` (a container engine's plugin on `runner`): checked as
    /// an `AttachWorkload` from the control API is, and its origin and interface name too.
    pub fn from_relay(runner: &str, req: pb::LocalAttachRequest) -> Result<Self, HubError> {
        let origin = check_origin(&req.origin)?;
        let ifname = match (req.handoff, req.ifname.trim()) {
            (_, "") => None,
            (true, _) => {
                return Err(HubError::InvalidArgument(
                    "ifname: a handed-off interface is named by the runner (the engine renames it); leave it empty".into(),
                ));
            }
            (false, name) => Some(check_ifname(name)?),
        };
        if req.handoff && !req.netns.trim().is_empty() {
            return Err(HubError::InvalidArgument(
                "netns: a handed-off interface is left in the runner's namespace for the engine to move; leave netns empty".into(),
            ));
        }
        let adopt = match req.adopt_port.trim() {
            "" => None,
            port => {
                if req.handoff || req.netns.trim().is_empty() || ifname.is_none() {
                    return Err(HubError::InvalidArgument(
                        "adopt_port: an adopted container needs its netns and ifname, and is no handoff".into(),
                    ));
                }
                if req.requested_ip.trim().is_empty() {
                    return Err(HubError::InvalidArgument(
                        "adopt_port: an adopted container keeps its address; give it as requested_ip".into(),
                    ));
                }
                let port = check_ifname(port)
                    .map_err(|e| HubError::InvalidArgument(format!("adopt_port: {e}")))?;
                Some(Adopt {
                    port,
                    mac: check_mac(&req.mac)?,
                })
            }
        };
        let mut parsed = Self::parse(pb::AttachWorkloadRequest {
            runner: runner.to_string(),
            workload_id: req.workload_id,
            netns: req.netns,
            pid: 0,
            network: req.network,
            labels: req.labels,
            requested_ip: req.requested_ip,
            reservation_token: req.reservation_token,
            // A handoff has no namespace, which only a VM's request may say; it is no VM.
            kind: if req.handoff {
                pb::WorkloadKind::Vm
            } else {
                pb::WorkloadKind::Container
            } as i32,
        })?;
        parsed.vm = false;
        parsed.handoff = req.handoff;
        parsed.origin = origin;
        parsed.ifname = ifname;
        parsed.adopt = adopt;
        Ok(parsed)
    }
}

/// `mac`: six hex bytes separated by ':' (normalised to lower case).
fn check_mac(mac: &str) -> Result<String, HubError> {
    let parts: Vec<&str> = mac.trim().split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(mac.trim().to_ascii_lowercase())
    } else {
        Err(HubError::InvalidArgument(format!(
            "mac: {} is not a MAC address like 02:42:0a:80:40:02",
            brief(mac)
        )))
    }
}

/// The engines whose plugins attach through a runner's local socket (and `kohakuriver`: the
/// containers `weir migrate kohakuriver` adopts).
pub const ENGINE_ORIGINS: [&str; 4] = ["cni", "docker", "netavark", "kohakuriver"];

/// `origin`: `ENGINE/NAME` — an engine of [`ENGINE_ORIGINS`] and the engine's network (1 to 64
/// letters, digits, `.`, `_` or `-`).
pub fn check_origin(origin: &str) -> Result<String, HubError> {
    let bad = || {
        HubError::InvalidArgument(format!(
            "origin: {} must be ENGINE/NAME with ENGINE one of {} and NAME 1 to 64 letters, digits, '.', '_' or '-'",
            brief(origin),
            ENGINE_ORIGINS.join(", ")
        ))
    };
    let (engine, name) = origin.split_once('/').ok_or_else(bad)?;
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ENGINE_ORIGINS.contains(&engine) && name_ok {
        Ok(origin.to_string())
    } else {
        Err(bad())
    }
}

/// `ifname`: a Linux interface name (1 to 15 bytes, no '/', ':' or whitespace, not `.` or
/// `..`), as the kernel's `dev_valid_name` accepts.
pub fn check_ifname(name: &str) -> Result<String, HubError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if ok {
        Ok(name.to_string())
    } else {
        Err(HubError::InvalidArgument(format!(
            "ifname: {} must be 1 to 15 printable characters without '/', ':' or spaces, and not '.' or '..'",
            brief(name)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_parsed_once_into_checked_values() {
        let r = AttachRequest::parse(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: "w1".into(),
            pid: 4242,
            requested_ip: " 10.128.64.9 ".into(),
            labels: [("tenant".to_string(), "a".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.netns, PathBuf::from("/proc/4242/ns/net"));
        assert_eq!(
            r.address,
            AddressSource::Requested(Ipv4Addr::new(10, 128, 64, 9))
        );
        assert!(!r.vm);
    }

    #[test]
    fn an_address_and_a_token_together_are_refused_naming_both() {
        let e = AttachRequest::parse(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: "w1".into(),
            netns: "/run/netns/w1".into(),
            requested_ip: "10.128.64.9".into(),
            reservation_token: "wr1.x.y".into(),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("requested_ip and reservation_token"), "{e}");
    }

    fn relayed(netns: &str, ifname: &str) -> pb::LocalAttachRequest {
        pb::LocalAttachRequest {
            origin: "docker/0123456789ab".into(),
            workload_id: "e".repeat(64),
            netns: netns.into(),
            ifname: ifname.into(),
            handoff: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_handoff_has_no_namespace_and_is_no_vm() {
        let r = AttachRequest::from_relay("r1", relayed("", "")).unwrap();
        assert!(r.handoff && !r.vm);
        assert_eq!(r.netns, PathBuf::new());
        assert_eq!(r.origin, "docker/0123456789ab");
    }

    #[test]
    fn a_handoff_naming_a_namespace_or_an_interface_is_refused_naming_it() {
        let e = AttachRequest::from_relay("r1", relayed("/run/netns/x", ""))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("netns:"), "{e}");
        let e = AttachRequest::from_relay("r1", relayed("", "eth0"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ifname:"), "{e}");
    }
}
