//! Test plugin `highest-address`: every workload gets the HIGHEST free address (from `last`
//! downwards, skipping taken addresses, the gateway and the host's `.254`); runner ids are the
//! built-in ones. Tests check that real workloads get exactly these addresses, and hot reload
//! swaps between this and `default-allocator`.

use weir_plugin_sdk::prelude::*;

struct HighestAddress;

impl Plugin for HighestAddress {
    fn configure(config: Config) -> Result<(), String> {
        check_keys(&config, &[])
    }
}

impl Allocator for HighestAddress {
    fn assign_runner(_request: RunnerRequest) -> RunnerDecision {
        RunnerDecision::Builtin
    }

    fn assign_address(request: AddressRequest) -> AddressDecision {
        highest(&request)
    }
}

weir_plugin_sdk::export_allocator!(HighestAddress);

/// The highest free address, or deny.
pub fn highest(request: &AddressRequest) -> AddressDecision {
    match free_addresses(request) {
        Ok(mut free) => match free.next_back() {
            Some(a) => AddressDecision::Address(a.to_string()),
            None => AddressDecision::Deny(format!("no free address left in {}", request.subnet)),
        },
        Err(e) => AddressDecision::Deny(format!("malformed address request: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(subnet: &str, first: &str, last: &str, taken: &[&str]) -> AddressRequest {
        AddressRequest {
            network: "default".into(),
            workload_id: "w1".into(),
            kind: WorkloadKind::Vm,
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

    #[test]
    fn picks_from_the_top() {
        let r = request("10.0.1.0/24", "10.0.1.2", "10.0.1.253", &[]);
        assert_eq!(highest(&r), AddressDecision::Address("10.0.1.253".into()));
        let r = request(
            "10.0.1.0/24",
            "10.0.1.2",
            "10.0.1.253",
            &["10.0.1.253", "10.0.1.252"],
        );
        assert_eq!(highest(&r), AddressDecision::Address("10.0.1.251".into()));
    }

    #[test]
    fn skips_the_host_side_and_the_gateway() {
        let r = request("10.0.1.0/24", "10.0.1.1", "10.0.1.254", &[]);
        assert_eq!(highest(&r), AddressDecision::Address("10.0.1.253".into()));
        let r = request("10.0.1.0/24", "10.0.1.1", "10.0.1.2", &["10.0.1.2"]);
        assert_eq!(
            highest(&r),
            AddressDecision::Deny("no free address left in 10.0.1.0/24".into())
        );
        let r = request("10.128.64.0/18", "10.128.64.2", "10.128.127.253", &[]);
        assert_eq!(
            highest(&r),
            AddressDecision::Address("10.128.127.253".into())
        );
    }
}
