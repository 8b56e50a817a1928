//! Requests as the hub takes them: each `weir.v1` request parsed once, at the API edge, into
//! checked values (a workload id that is a safe name, an absolute namespace reference, bounded
//! labels, an address or a token). The hub's rules see only these.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use weir_proto::v1 as pb;

use super::{HubError, brief, check_labels, check_netns, check_workload_id};

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
        })
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
}
