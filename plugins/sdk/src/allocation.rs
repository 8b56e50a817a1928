//! Helpers for allocator plugins: the address pool behind a trait, so a decision is written
//! once and runs against the host's [`Pool`](crate::Pool) in the component and against a
//! [`MemoryPool`] in unit tests.
//!
//! The host's pool already leaves out the gateway, the host's `.254` and every address held
//! (workloads, reservations, VMs): whatever it calls free, the host accepts.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::types::AddressRequest;

/// What a decision may ask of a pool. Each call on the host's pool is one host call of
/// O(log n); nothing is copied into the plugin.
pub trait FreePool {
    /// How many addresses are free.
    fn free_count(&self) -> u32;
    /// Whether `a` is free.
    fn is_free(&self, a: Ipv4Addr) -> bool;
    /// The lowest free address at or above `start`.
    fn next_free(&self, start: Ipv4Addr) -> Option<Ipv4Addr>;
    /// The highest free address at or below `start`.
    fn prev_free(&self, start: Ipv4Addr) -> Option<Ipv4Addr>;
    /// At most `max` free ranges (inclusive), ascending, from the one holding or following
    /// `start`.
    fn free_ranges(&self, start: Ipv4Addr, max: u32) -> Vec<(Ipv4Addr, Ipv4Addr)>;
}

impl FreePool for crate::Pool {
    fn free_count(&self) -> u32 {
        crate::Pool::free_count(self)
    }
    fn is_free(&self, a: Ipv4Addr) -> bool {
        crate::Pool::is_free(self, u32::from(a))
    }
    fn next_free(&self, start: Ipv4Addr) -> Option<Ipv4Addr> {
        crate::Pool::next_free(self, u32::from(start)).map(Ipv4Addr::from)
    }
    fn prev_free(&self, start: Ipv4Addr) -> Option<Ipv4Addr> {
        crate::Pool::prev_free(self, u32::from(start)).map(Ipv4Addr::from)
    }
    fn free_ranges(&self, start: Ipv4Addr, max: u32) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        crate::Pool::free_ranges(self, u32::from(start), max)
            .into_iter()
            .map(|r| (Ipv4Addr::from(r.first), Ipv4Addr::from(r.last)))
            .collect()
    }
}

/// A pool in plugin memory, for unit tests: `first..=last` minus the held addresses.
#[derive(Debug, Clone, Default)]
pub struct MemoryPool {
    free: BTreeSet<u32>,
}

impl MemoryPool {
    /// The pool of `request` (its range minus its gateway and the host's `.254`) with `held`
    /// taken, as the host would offer it.
    pub fn for_request(request: &AddressRequest, held: &[Ipv4Addr]) -> Self {
        let host_side = (request.subnet.prefix <= 24)
            .then(|| request.subnet.address.checked_add(254))
            .flatten();
        let held: BTreeSet<u32> = held.iter().map(|a| u32::from(*a)).collect();
        Self {
            free: (request.first..=request.last)
                .filter(|a| *a != request.gateway && Some(*a) != host_side && !held.contains(a))
                .collect(),
        }
    }
}

impl FreePool for MemoryPool {
    fn free_count(&self) -> u32 {
        self.free.len() as u32
    }
    fn is_free(&self, a: Ipv4Addr) -> bool {
        self.free.contains(&u32::from(a))
    }
    fn next_free(&self, start: Ipv4Addr) -> Option<Ipv4Addr> {
        self.free
            .range(u32::from(start)..)
            .next()
            .map(|a| Ipv4Addr::from(*a))
    }
    fn prev_free(&self, start: Ipv4Addr) -> Option<Ipv4Addr> {
        self.free
            .range(..=u32::from(start))
            .next_back()
            .map(|a| Ipv4Addr::from(*a))
    }
    fn free_ranges(&self, start: Ipv4Addr, max: u32) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        for a in self.free.range(u32::from(start)..) {
            if let Some((_, e)) = out.last_mut()
                && *e + 1 == *a
            {
                *e = *a;
                continue;
            }
            if out.len() == max as usize {
                break;
            }
            out.push((*a, *a));
        }
        out.into_iter()
            .map(|(s, e)| (Ipv4Addr::from(s), Ipv4Addr::from(e)))
            .collect()
    }
}

/// The lowest address the host would accept for `request`: one host call.
pub fn lowest_free(request: &AddressRequest, pool: &impl FreePool) -> Option<Ipv4Addr> {
    pool.next_free(Ipv4Addr::from(request.first))
        .filter(|a| u32::from(*a) <= request.last)
}

/// The highest address the host would accept for `request`: one host call.
pub fn highest_free(request: &AddressRequest, pool: &impl FreePool) -> Option<Ipv4Addr> {
    pool.prev_free(Ipv4Addr::from(request.last))
        .filter(|a| u32::from(*a) >= request.first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Cidr, Engine, Origin, WorkloadKind};

    fn request(subnet: &str, prefix: u8, first: &str, last: &str) -> AddressRequest {
        let n = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
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
            subnet: Cidr {
                address: n(subnet),
                prefix,
            },
            gateway: n(subnet) + 1,
            first: n(first),
            last: n(last),
        }
    }

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_memory_pool_skips_held_gateway_and_host_side() {
        let r = request("10.0.1.0", 24, "10.0.1.1", "10.0.1.254");
        let p = MemoryPool::for_request(&r, &[a("10.0.1.2"), a("10.0.1.4")]);
        assert_eq!(lowest_free(&r, &p), Some(a("10.0.1.3")));
        assert_eq!(highest_free(&r, &p), Some(a("10.0.1.253")));
        assert!(!p.is_free(a("10.0.1.1")) && !p.is_free(a("10.0.1.254")));
        assert_eq!(p.free_count(), 254 - 2 - 2);
        assert_eq!(
            p.free_ranges(a("10.0.1.0"), 2),
            [
                (a("10.0.1.3"), a("10.0.1.3")),
                (a("10.0.1.5"), a("10.0.1.253"))
            ]
        );
        assert_eq!(p.free_ranges(a("10.0.1.0"), 1).len(), 1);
    }

    #[test]
    fn a_full_pool_has_no_lowest_or_highest() {
        let r = request("10.0.1.0", 29, "10.0.1.2", "10.0.1.3");
        let p = MemoryPool::for_request(&r, &[a("10.0.1.2"), a("10.0.1.3")]);
        assert_eq!(lowest_free(&r, &p), None);
        assert_eq!(highest_free(&r, &p), None);
        assert_eq!(p.free_count(), 0);
    }
}
