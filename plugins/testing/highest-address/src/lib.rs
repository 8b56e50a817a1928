//! Test plugin `highest-address`: every workload gets the HIGHEST free address of the pool
//! (one query from `last` downwards; the pool never offers a held address, the gateway or the
//! host's `.254`); runner ids are the built-in ones. Tests check that real workloads get
//! exactly these addresses, and hot reload swaps between this and `default-allocator`.

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

    fn assign_address(request: AddressRequest, pool: &Pool) -> AddressDecision {
        highest(&request, pool)
    }
}

weir_plugin_sdk::export_allocator!(HighestAddress);

/// The highest free address, or deny.
pub fn highest(request: &AddressRequest, pool: &impl FreePool) -> AddressDecision {
    match highest_free(request, pool) {
        Some(a) => AddressDecision::Address(num(a)),
        None => AddressDecision::Deny(format!(
            "no free address left in {}",
            Cidr::from(request.subnet)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(subnet: &str, first: &str, last: &str) -> AddressRequest {
        let net = Cidr::parse(subnet).unwrap();
        let n = |s: &str| num(s.parse().unwrap());
        AddressRequest {
            network: "default".into(),
            workload_id: "w1".into(),
            kind: WorkloadKind::Vm,
            origin: Origin {
                engine: Engine::Scheduler,
                name: String::new(),
            },
            labels: vec![],
            runner: "r1".into(),
            runner_labels: vec![],
            subnet: net.into(),
            gateway: num(net.nth(1).unwrap()),
            first: n(first),
            last: n(last),
        }
    }

    fn decide(r: &AddressRequest, held: &[&str]) -> AddressDecision {
        let held: Vec<_> = held.iter().map(|a| a.parse().unwrap()).collect();
        highest(r, &MemoryPool::for_request(r, &held))
    }

    fn address(s: &str) -> AddressDecision {
        AddressDecision::Address(num(s.parse().unwrap()))
    }

    #[test]
    fn picks_from_the_top() {
        let r = request("10.0.1.0/24", "10.0.1.2", "10.0.1.253");
        assert_eq!(decide(&r, &[]), address("10.0.1.253"));
        assert_eq!(
            decide(&r, &["10.0.1.253", "10.0.1.252"]),
            address("10.0.1.251")
        );
    }

    #[test]
    fn skips_the_host_side_and_the_gateway() {
        let r = request("10.0.1.0/24", "10.0.1.1", "10.0.1.254");
        assert_eq!(decide(&r, &[]), address("10.0.1.253"));
        let r = request("10.0.1.0/24", "10.0.1.1", "10.0.1.2");
        assert_eq!(
            decide(&r, &["10.0.1.2"]),
            AddressDecision::Deny("no free address left in 10.0.1.0/24".into())
        );
        let r = request("10.128.64.0/18", "10.128.64.2", "10.128.127.253");
        assert_eq!(decide(&r, &[]), address("10.128.127.253"));
    }
}
