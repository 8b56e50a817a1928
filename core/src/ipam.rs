//! The built-in allocation policy: which id a runner gets, which address a workload gets.
//!
//! Pure logic over in-memory state; the hub persists the outcome. Policy plugins replace these
//! decisions; these functions stay the default and the fallback.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::decision::{FreeRanges, PoolView};

/// What the allocator knows about an id that is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenId {
    pub id: u32,
    /// The runner holding it; `None` for a placeholder recovered from the kernel.
    pub runner: Option<String>,
    pub physical_ip: Ipv4Addr,
    pub last_seen_ms: i64,
    pub active: bool,
}

/// The outcome of choosing an id for a registering runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdChoice {
    /// The runner already holds this id.
    Keep(u32),
    /// A placeholder recovered with this runner's physical IP: the runner takes it over.
    Claim(u32),
    /// The lowest free id.
    Fresh(u32),
    /// Every id is taken; the least recently seen inactive holder loses this one.
    Reclaim { id: u32, from: Option<String> },
    /// Every id is taken by an active runner.
    Exhausted { max: u32 },
}

/// Choose an id for runner `name` at `physical_ip`, given every taken id and the plan's max.
pub fn choose_runner_id(
    name: &str,
    physical_ip: Ipv4Addr,
    taken: &[TakenId],
    max: u32,
) -> IdChoice {
    if let Some(t) = taken.iter().find(|t| t.runner.as_deref() == Some(name)) {
        return IdChoice::Keep(t.id);
    }
    if let Some(t) = taken
        .iter()
        .find(|t| t.runner.is_none() && t.physical_ip == physical_ip)
    {
        return IdChoice::Claim(t.id);
    }
    let used: BTreeSet<u32> = taken.iter().map(|t| t.id).collect();
    if let Some(id) = (1..=max).find(|id| !used.contains(id)) {
        return IdChoice::Fresh(id);
    }
    match taken
        .iter()
        .filter(|t| !t.active)
        .min_by_key(|t| (t.last_seen_ms, t.id))
    {
        Some(victim) => IdChoice::Reclaim {
            id: victim.id,
            from: victim.runner.clone(),
        },
        None => IdChoice::Exhausted { max },
    }
}

/// Why an address cannot be given out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{ip} is outside {subnet} (allowed: {first} to {last})")]
    Outside {
        ip: Ipv4Addr,
        subnet: Ipv4Net,
        first: Ipv4Addr,
        last: Ipv4Addr,
    },
    #[error("{ip} is reserved on {subnet} ({why})")]
    Reserved {
        ip: Ipv4Addr,
        subnet: Ipv4Net,
        why: &'static str,
    },
    #[error("{ip} is already in use")]
    InUse { ip: Ipv4Addr },
    #[error("no free address left in {subnet} ({count} in use)")]
    Full { subnet: Ipv4Net, count: usize },
}

/// The workload addresses of one runner on one network.
///
/// The free addresses are kept as disjoint ranges ([`FreeRanges`]) behind an [`Arc`]: taking,
/// releasing and finding the lowest free address are O(log r), and a policy decision reads
/// the same ranges through a [`PoolView`] without a copy.
#[derive(Debug, Clone)]
pub struct AddressPool {
    subnet: Ipv4Net,
    first: u32,
    last: u32,
    /// Addresses inside first..=last that are never handed out (the host's `.254`).
    excluded: Vec<(u32, &'static str)>,
    free: Arc<FreeRanges>,
    in_use: usize,
    /// Changes so far (a decision's view names the state it saw).
    generation: u64,
}

impl AddressPool {
    /// A pool over `subnet` giving `.2` … broadcast − 2, never `.1` (gateway) or `excluded`.
    pub fn new(subnet: Ipv4Net, excluded: &[(Ipv4Addr, &'static str)]) -> Self {
        let net = u32::from(subnet.network());
        let bcast = u32::from(subnet.broadcast());
        // Saturating: a /31 or /32 at the top of the address space gives an empty pool
        // (first > last) rather than an overflow.
        let (first, last) = (net.saturating_add(2), bcast.saturating_sub(2));
        let excluded: Vec<(u32, &'static str)> = excluded
            .iter()
            .map(|(ip, why)| (u32::from(*ip), *why))
            .collect();
        let mut free = FreeRanges::new(first, last);
        for (x, _) in &excluded {
            free.remove(*x);
        }
        Self {
            subnet,
            first,
            last,
            excluded,
            free: Arc::new(free),
            in_use: 0,
            generation: 0,
        }
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// What a policy decision sees of the pool: the free ranges, shared (O(1)).
    pub fn view(&self) -> PoolView {
        PoolView::new(self.free.clone(), self.generation)
    }

    /// The first and last address a workload can get.
    pub fn range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (Ipv4Addr::from(self.first), Ipv4Addr::from(self.last))
    }

    /// Whether `ip` could be given out at all (ignoring whether it is taken).
    pub fn check(&self, ip: Ipv4Addr) -> Result<(), AddressError> {
        let a = u32::from(ip);
        let net = u32::from(self.subnet.network());
        if net.checked_add(1) == Some(a) && self.subnet.contains(&ip) {
            return Err(AddressError::Reserved {
                ip,
                subnet: self.subnet,
                why: "the gateway",
            });
        }
        if let Some((_, why)) = self.excluded.iter().find(|(x, _)| *x == a) {
            return Err(AddressError::Reserved {
                ip,
                subnet: self.subnet,
                why,
            });
        }
        if a < self.first || a > self.last {
            return Err(AddressError::Outside {
                ip,
                subnet: self.subnet,
                first: Ipv4Addr::from(self.first),
                last: Ipv4Addr::from(self.last),
            });
        }
        Ok(())
    }

    /// The free ranges, for a change. A decision's view has been dropped by then (the hub
    /// changes a pool only after the decision returned), so this does not copy.
    fn free_mut(&mut self) -> &mut FreeRanges {
        self.generation += 1;
        Arc::make_mut(&mut self.free)
    }

    /// Take a specific address.
    pub fn take(&mut self, ip: Ipv4Addr) -> Result<(), AddressError> {
        self.check(ip)?;
        if !self.free.contains(u32::from(ip)) {
            return Err(AddressError::InUse { ip });
        }
        self.free_mut().remove(u32::from(ip));
        self.in_use += 1;
        Ok(())
    }

    /// Take the lowest free address.
    pub fn take_next(&mut self) -> Result<Ipv4Addr, AddressError> {
        let Some(a) = self.free.first() else {
            return Err(AddressError::Full {
                subnet: self.subnet,
                count: self.in_use,
            });
        };
        self.free_mut().remove(a);
        self.in_use += 1;
        Ok(Ipv4Addr::from(a))
    }

    /// Give an address back. Unknown addresses are ignored.
    pub fn release(&mut self, ip: Ipv4Addr) {
        let a = u32::from(ip);
        if self.check(ip).is_ok() && !self.free.contains(a) {
            self.free_mut().insert(a);
            self.in_use -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(id: u32, runner: Option<&str>, last: i64, active: bool) -> TakenId {
        TakenId {
            id,
            runner: runner.map(str::to_string),
            physical_ip: Ipv4Addr::new(192, 0, 2, id as u8),
            last_seen_ms: last,
            active,
        }
    }

    #[test]
    fn runner_ids() {
        let ip = Ipv4Addr::new(192, 0, 2, 50);
        assert_eq!(choose_runner_id("a", ip, &[], 3), IdChoice::Fresh(1));
        let t = [taken(1, Some("a"), 10, true), taken(3, Some("c"), 5, true)];
        assert_eq!(choose_runner_id("a", ip, &t, 3), IdChoice::Keep(1));
        assert_eq!(choose_runner_id("b", ip, &t, 3), IdChoice::Fresh(2));
        // A placeholder is claimed by physical IP, not by a name prefix.
        let t = [taken(2, None, 10, true)];
        assert_eq!(
            choose_runner_id("x", Ipv4Addr::new(192, 0, 2, 2), &t, 3),
            IdChoice::Claim(2)
        );
        assert_eq!(choose_runner_id("x", ip, &t, 3), IdChoice::Fresh(1));
        // Full: the least recently seen inactive holder loses its id.
        let t = [
            taken(1, Some("a"), 30, false),
            taken(2, Some("b"), 20, false),
            taken(3, Some("c"), 10, true),
        ];
        assert_eq!(
            choose_runner_id("d", ip, &t, 3),
            IdChoice::Reclaim {
                id: 2,
                from: Some("b".into())
            }
        );
        let t = [
            taken(1, Some("a"), 30, true),
            taken(2, Some("b"), 20, true),
            taken(3, None, 1, true),
        ];
        assert_eq!(
            choose_runner_id("d", ip, &t, 3),
            IdChoice::Exhausted { max: 3 }
        );
    }

    #[test]
    fn addresses_skip_gateway_host_side_and_taken() {
        let subnet: Ipv4Net = "10.0.1.0/24".parse().unwrap();
        let host_side = Ipv4Addr::new(10, 0, 1, 254);
        let mut p = AddressPool::new(subnet, &[(host_side, "the host's address")]);
        assert_eq!(p.take_next().unwrap(), Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(p.take_next().unwrap(), Ipv4Addr::new(10, 0, 1, 3));
        p.take(Ipv4Addr::new(10, 0, 1, 4)).unwrap();
        assert_eq!(p.take_next().unwrap(), Ipv4Addr::new(10, 0, 1, 5));
        p.release(Ipv4Addr::new(10, 0, 1, 3));
        assert_eq!(p.take_next().unwrap(), Ipv4Addr::new(10, 0, 1, 3));
        assert!(matches!(
            p.take(Ipv4Addr::new(10, 0, 1, 1)),
            Err(AddressError::Reserved { .. })
        ));
        assert!(matches!(
            p.take(host_side),
            Err(AddressError::Reserved { .. })
        ));
        assert!(matches!(
            p.take(Ipv4Addr::new(10, 0, 1, 255)),
            Err(AddressError::Outside { .. })
        ));
        assert!(matches!(
            p.take(Ipv4Addr::new(10, 0, 2, 7)),
            Err(AddressError::Outside { .. })
        ));
        assert!(matches!(
            p.take(Ipv4Addr::new(10, 0, 1, 4)),
            Err(AddressError::InUse { .. })
        ));
        // Fill the pool: .2 ..= .253 is 252 addresses.
        while p.take_next().is_ok() {}
        assert_eq!(p.in_use(), 252);
        assert!(!p.free.contains(u32::from(host_side)));
        assert!(matches!(p.take_next(), Err(AddressError::Full { .. })));
    }

    /// Regression found by `prop_policy_accepted_addresses_are_assignable`: a /31 or /32 at
    /// the top of the address space overflowed computing the first address.
    #[test]
    fn tiny_subnets_at_the_top_give_an_empty_pool() {
        for cidr in ["255.255.255.254/31", "255.255.255.255/32"] {
            let mut p = AddressPool::new(cidr.parse().unwrap(), &[]);
            assert!(
                matches!(p.take_next(), Err(AddressError::Full { .. })),
                "{cidr}"
            );
            assert!(p.take(Ipv4Addr::new(255, 255, 255, 255)).is_err());
        }
    }

    #[test]
    fn a_decision_s_view_is_a_snapshot_shared_without_a_copy() {
        let subnet: Ipv4Net = "10.0.1.0/24".parse().unwrap();
        let mut p = AddressPool::new(subnet, &[]);
        let a = p.take_next().unwrap();
        let ranges = Arc::as_ptr(&p.free);
        {
            let v = p.view();
            assert!(!v.is_free(a));
            assert_eq!(v.generation(), 1);
        }
        // No view left: the change happens in place.
        let b = p.take_next().unwrap();
        assert_eq!(Arc::as_ptr(&p.free), ranges, "the ranges were copied");
        // A view kept across a change still shows what it saw.
        let v = p.view();
        p.release(a);
        assert!(!v.is_free(a) && v.generation() == 2);
        assert!(p.view().is_free(a) && !p.view().is_free(b));
    }

    #[test]
    fn large_blocks_skip_the_host_side_inside_the_range() {
        let subnet: Ipv4Net = "10.128.64.0/18".parse().unwrap();
        let host_side = Ipv4Addr::new(10, 128, 64, 254);
        let mut p = AddressPool::new(subnet, &[(host_side, "the host's address")]);
        for _ in 0..260 {
            let ip = p.take_next().unwrap();
            assert_ne!(ip, host_side);
        }
        assert!(!p.free.contains(u32::from(Ipv4Addr::new(10, 128, 65, 5))));
    }
}
