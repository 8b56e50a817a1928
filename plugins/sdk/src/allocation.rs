//! Helpers for allocator plugins.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::net::{Cidr, addresses, parse_ipv4};
use crate::types::AddressRequest;

/// The host's own address on a runner's subnet is the subnet's address + 254 (`.254`).
pub const HOST_ON_SUBNET_OFFSET: u32 = 254;

/// The host's address on `subnet` (network + 254). It may lie outside a small subnet, in
/// which case it is simply never among the workload addresses.
pub fn host_address(subnet: &Cidr) -> Option<Ipv4Addr> {
    u32::from(subnet.network())
        .checked_add(HOST_ON_SUBNET_OFFSET)
        .map(Ipv4Addr::from)
}

/// The addresses the host would accept for `request`, in ascending order: from `first` to
/// `last`, minus `taken`, the gateway and the host's `.254`. Take `.next()` for the lowest and
/// `.next_back()` for the highest.
///
/// Errors if `subnet`, `first` or `last` is malformed (the host never sends that).
pub fn free_addresses(
    request: &AddressRequest,
) -> Result<impl DoubleEndedIterator<Item = Ipv4Addr> + use<>, String> {
    let subnet = Cidr::parse(&request.subnet)?;
    let first = parse_ipv4(&request.first)?;
    let last = parse_ipv4(&request.last)?;
    // An unparsable gateway or taken entry cannot equal a candidate; ignore it.
    let gateway = parse_ipv4(&request.gateway).ok();
    let host = host_address(&subnet);
    let taken: BTreeSet<Ipv4Addr> = request
        .taken
        .iter()
        .filter_map(|t| parse_ipv4(t).ok())
        .collect();
    Ok(addresses(first, last)
        .filter(move |a| !taken.contains(a) && Some(*a) != gateway && Some(*a) != host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::WorkloadKind;

    fn request(subnet: &str, first: &str, last: &str, taken: &[&str]) -> AddressRequest {
        AddressRequest {
            network: "default".into(),
            workload_id: "w1".into(),
            kind: WorkloadKind::Container,
            labels: vec![],
            runner: "r1".into(),
            runner_labels: vec![],
            subnet: subnet.into(),
            gateway: Cidr::parse(subnet).unwrap().nth(1).unwrap().to_string(),
            first: first.into(),
            last: last.into(),
            taken: taken.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn free(r: &AddressRequest) -> Vec<String> {
        free_addresses(r).unwrap().map(|a| a.to_string()).collect()
    }

    #[test]
    fn skips_taken_gateway_and_host_side() {
        let r = request(
            "10.0.1.0/24",
            "10.0.1.1",
            "10.0.1.254",
            &["10.0.1.2", "10.0.1.4"],
        );
        let f = free(&r);
        assert_eq!(&f[..2], ["10.0.1.3", "10.0.1.5"]);
        assert_eq!(f.last().unwrap(), "10.0.1.253");
        assert!(!f.contains(&"10.0.1.1".to_string()));
        assert!(!f.contains(&"10.0.1.254".to_string()));
        assert_eq!(f.len(), 254 - 3 - 1);
    }

    #[test]
    fn host_side_inside_a_large_block() {
        let r = request(
            "10.128.64.0/18",
            "10.128.64.252",
            "10.128.65.1",
            &["10.128.64.253"],
        );
        assert_eq!(
            free(&r),
            [
                "10.128.64.252",
                "10.128.64.255",
                "10.128.65.0",
                "10.128.65.1"
            ]
        );
        let mut it = free_addresses(&r).unwrap();
        assert_eq!(it.next_back().unwrap().to_string(), "10.128.65.1");
        assert_eq!(it.next().unwrap().to_string(), "10.128.64.252");
    }

    #[test]
    fn host_address_of_small_subnets_is_outside() {
        let c = Cidr::parse("10.0.1.0/28").unwrap();
        assert_eq!(host_address(&c).unwrap().to_string(), "10.0.1.254");
        assert!(!c.contains(host_address(&c).unwrap()));
        assert_eq!(
            host_address(&Cidr::parse("255.255.255.0/24").unwrap())
                .unwrap()
                .to_string(),
            "255.255.255.254"
        );
        assert_eq!(
            host_address(&Cidr::parse("255.255.255.255/32").unwrap()),
            None
        );
    }

    #[test]
    fn malformed_requests_are_errors() {
        let mut r = request("10.0.1.0/24", "10.0.1.2", "10.0.1.253", &["garbage"]);
        assert_eq!(free(&r).len(), 252);
        r.first = "nope".into();
        assert!(free_addresses(&r).is_err());
        r.first = "10.0.1.2".into();
        r.subnet = "10.0.1.0".into();
        assert!(free_addresses(&r).is_ok(), "a bare address is a /32");
        r.subnet = "10.0.1.0/99".into();
        assert!(free_addresses(&r).is_err());
    }

    #[test]
    fn empty_when_full() {
        let r = request(
            "10.0.1.0/29",
            "10.0.1.2",
            "10.0.1.3",
            &["10.0.1.2", "10.0.1.3"],
        );
        assert!(free(&r).is_empty());
    }
}
