//! `default-allocator`: Weir's built-in allocation policy as a plugin, for parity tests.
//!
//! It never answers `builtin` or `next-free`: every decision is made here, explicitly.
//!
//! - Runner ids: a runner whose name holds an id keeps it; else a placeholder recovered with
//!   the runner's physical IP is claimed; else the lowest id in `1..=max-runners` nobody holds;
//!   else the id of the least recently seen inactive holder (ties: the lower id); else deny.
//! - Addresses: the lowest free address of the pool from `first` to `last` (the pool never
//!   offers the gateway, the host's `.254` or a held address): one query of the host's pool,
//!   whatever the number of workloads; else deny.
//!
//! Settings: none.

use std::collections::BTreeSet;

use weir_plugin_sdk::prelude::*;

struct DefaultAllocator;

impl Plugin for DefaultAllocator {
    fn configure(config: Config) -> Result<(), String> {
        check_keys(&config, &[])
    }
}

impl Allocator for DefaultAllocator {
    fn assign_runner(request: RunnerRequest) -> RunnerDecision {
        choose_runner_id(&request)
    }

    fn assign_address(request: AddressRequest, pool: &Pool) -> AddressDecision {
        choose_address(&request, pool)
    }
}

weir_plugin_sdk::export_allocator!(DefaultAllocator);

/// Which id runner `request.name` gets.
pub fn choose_runner_id(request: &RunnerRequest) -> RunnerDecision {
    let taken = &request.taken;
    if let Some(t) = taken
        .iter()
        .find(|t| t.runner.as_deref() == Some(request.name.as_str()))
    {
        return RunnerDecision::Id(t.id);
    }
    if let Some(t) = taken
        .iter()
        .find(|t| t.runner.is_none() && t.physical_ip == request.physical_ip)
    {
        return RunnerDecision::Id(t.id);
    }
    let max = request.plan.max_runners;
    let used: BTreeSet<u32> = taken.iter().map(|t| t.id).collect();
    if let Some(id) = (1..=max).find(|id| !used.contains(id)) {
        return RunnerDecision::Id(id);
    }
    match taken
        .iter()
        .filter(|t| !t.active)
        .min_by_key(|t| (t.last_seen_ms, t.id))
    {
        Some(victim) => RunnerDecision::Id(victim.id),
        None => RunnerDecision::Deny(format!(
            "no runner id is free: plan {} allows at most {max} runners and all are held by active runners",
            request.plan.spec
        )),
    }
}

/// The lowest free address (see [`lowest_free`]), or deny.
pub fn choose_address(request: &AddressRequest, pool: &impl FreePool) -> AddressDecision {
    match lowest_free(request, pool) {
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

    fn n(ip: &str) -> u32 {
        num(ip.parse().unwrap())
    }

    fn held(id: u32, runner: Option<&str>, ip: &str, last_seen_ms: i64, active: bool) -> TakenId {
        TakenId {
            id,
            runner: runner.map(str::to_string),
            physical_ip: n(ip),
            last_seen_ms,
            active,
        }
    }

    fn runner(name: &str, ip: &str, max: u32, taken: Vec<TakenId>) -> RunnerRequest {
        RunnerRequest {
            network: "default".into(),
            name: name.into(),
            physical_ip: n(ip),
            labels: vec![],
            taken,
            plan: Plan {
                spec: "10.128.0.0/12/2/14".into(),
                overlay: Cidr::parse("10.128.0.0/12").unwrap().into(),
                max_runners: max,
            },
        }
    }

    #[test]
    fn known_name_keeps_its_id() {
        let r = runner(
            "b",
            "192.0.2.2",
            3,
            vec![
                held(1, Some("a"), "192.0.2.1", 5, true),
                held(3, Some("b"), "192.0.2.9", 1, false),
            ],
        );
        assert_eq!(choose_runner_id(&r), RunnerDecision::Id(3));
    }

    #[test]
    fn placeholder_with_the_same_physical_ip_is_claimed() {
        let r = runner(
            "new",
            "192.0.2.7",
            3,
            vec![
                held(2, None, "192.0.2.6", 0, true),
                held(3, None, "192.0.2.7", 0, true),
            ],
        );
        assert_eq!(choose_runner_id(&r), RunnerDecision::Id(3));
        // A placeholder held by no runner but with another IP is not claimed.
        let r = runner(
            "new",
            "192.0.2.8",
            3,
            vec![held(1, None, "192.0.2.7", 0, true)],
        );
        assert_eq!(choose_runner_id(&r), RunnerDecision::Id(2));
        // A runner's (not a placeholder's) id is never claimed by IP.
        let r = runner(
            "new",
            "192.0.2.8",
            3,
            vec![held(1, Some("old"), "192.0.2.8", 0, false)],
        );
        assert_eq!(choose_runner_id(&r), RunnerDecision::Id(2));
    }

    #[test]
    fn lowest_free_id() {
        assert_eq!(
            choose_runner_id(&runner("a", "192.0.2.1", 3, vec![])),
            RunnerDecision::Id(1)
        );
        let r = runner(
            "c",
            "192.0.2.3",
            4,
            vec![
                held(1, Some("a"), "192.0.2.1", 0, false),
                held(3, Some("b"), "192.0.2.2", 0, true),
            ],
        );
        assert_eq!(choose_runner_id(&r), RunnerDecision::Id(2));
    }

    #[test]
    fn reclaims_the_least_recently_seen_inactive_holder() {
        let r = runner(
            "d",
            "192.0.2.4",
            3,
            vec![
                held(1, Some("a"), "192.0.2.1", 10, true),
                held(2, Some("b"), "192.0.2.2", 300, false),
                held(3, None, "192.0.2.3", 200, false),
            ],
        );
        assert_eq!(choose_runner_id(&r), RunnerDecision::Id(3));
        // Ties go to the lower id.
        let r = runner(
            "d",
            "192.0.2.4",
            3,
            vec![
                held(3, Some("c"), "192.0.2.3", 7, false),
                held(2, Some("b"), "192.0.2.2", 7, false),
                held(1, Some("a"), "192.0.2.1", 1, true),
            ],
        );
        assert_eq!(choose_runner_id(&r), RunnerDecision::Id(2));
    }

    #[test]
    fn denies_when_every_id_is_held_by_an_active_runner() {
        let r = runner(
            "c",
            "192.0.2.3",
            2,
            vec![
                held(1, Some("a"), "192.0.2.1", 0, true),
                held(2, Some("b"), "192.0.2.2", 0, true),
            ],
        );
        assert_eq!(
            choose_runner_id(&r),
            RunnerDecision::Deny(
                "no runner id is free: plan 10.128.0.0/12/2/14 allows at most 2 runners and all are held by active runners".into()
            )
        );
        assert!(matches!(
            choose_runner_id(&runner("a", "192.0.2.1", 0, vec![])),
            RunnerDecision::Deny(_)
        ));
    }

    fn address(subnet: &str, first: &str, last: &str) -> AddressRequest {
        let net = Cidr::parse(subnet).unwrap();
        AddressRequest {
            network: "default".into(),
            workload_id: "w1".into(),
            kind: WorkloadKind::Container,
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

    fn pool(r: &AddressRequest, held: &[&str]) -> MemoryPool {
        let held: Vec<_> = held.iter().map(|a| a.parse().unwrap()).collect();
        MemoryPool::for_request(r, &held)
    }

    fn assigned(r: &AddressRequest, held: &[&str]) -> String {
        match choose_address(r, &pool(r, held)) {
            AddressDecision::Address(a) => ip(a).to_string(),
            other => panic!("expected an address, got {other:?}"),
        }
    }

    #[test]
    fn lowest_free_address() {
        let r = address("10.0.1.0/24", "10.0.1.2", "10.0.1.253");
        assert_eq!(assigned(&r, &[]), "10.0.1.2");
        assert_eq!(
            assigned(&r, &["10.0.1.2", "10.0.1.3", "10.0.1.5"]),
            "10.0.1.4"
        );
    }

    #[test]
    fn gateway_is_never_given_out() {
        let r = address("10.0.1.0/24", "10.0.1.1", "10.0.1.253");
        assert_eq!(assigned(&r, &[]), "10.0.1.2");
    }

    #[test]
    fn host_side_254_is_skipped_inside_a_large_block() {
        let r = address("10.128.64.0/18", "10.128.64.2", "10.128.127.253");
        let held: Vec<String> = addresses(
            "10.128.64.2".parse().unwrap(),
            "10.128.64.253".parse().unwrap(),
        )
        .map(|a| a.to_string())
        .collect();
        let held: Vec<&str> = held.iter().map(String::as_str).collect();
        assert_eq!(assigned(&r, &held), "10.128.64.255");
    }

    #[test]
    fn full_subnet_is_denied() {
        let r = address("10.0.1.0/29", "10.0.1.2", "10.0.1.5");
        let p = pool(&r, &["10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5"]);
        assert_eq!(
            choose_address(&r, &p),
            AddressDecision::Deny("no free address left in 10.0.1.0/29".into())
        );
        let r = address("10.0.1.0/24", "10.0.1.254", "10.0.1.254");
        assert!(matches!(
            choose_address(&r, &pool(&r, &[])),
            AddressDecision::Deny(_)
        ));
    }
}
