//! The free addresses of a pool as a set of disjoint ranges, and the read-only view of it a
//! policy decision gets.
//!
//! Every query and every change is O(log r), r the number of free ranges (1 for a pool filled
//! from the bottom, at most half the addresses when every other one is held). The hub's
//! [`AddressPool`](crate::ipam::AddressPool) keeps one behind an [`Arc`]: a decision's
//! [`PoolView`] shares it instead of copying it, and the hub changes it only after the
//! decision has let go (so `Arc::make_mut` does not copy either).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Free addresses as disjoint, non-adjacent inclusive ranges (`start → end`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreeRanges {
    ranges: BTreeMap<u32, u32>,
    count: u64,
    /// XOR of [`mix`] over every address of `span` that is not free: equal contents give an
    /// equal digest, whatever the order of the changes that led there.
    digest: u64,
}

/// A 64-bit mix of one address (SplitMix64's finaliser), for [`FreeRanges::digest`].
fn mix(a: u32) -> u64 {
    let mut z = u64::from(a).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl FreeRanges {
    /// Every address from `first` to `last` free (none if `first > last`).
    pub fn new(first: u32, last: u32) -> Self {
        let mut ranges = BTreeMap::new();
        let count = if first <= last {
            ranges.insert(first, last);
            u64::from(last - first) + 1
        } else {
            0
        };
        Self {
            ranges,
            count,
            digest: 0,
        }
    }

    /// How many addresses are free.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of what is not free (see the field).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The range holding `a`, if `a` is free.
    fn holding(&self, a: u32) -> Option<(u32, u32)> {
        self.ranges
            .range(..=a)
            .next_back()
            .filter(|(_, e)| a <= **e)
            .map(|(s, e)| (*s, *e))
    }

    pub fn contains(&self, a: u32) -> bool {
        self.holding(a).is_some()
    }

    /// The lowest free address.
    pub fn first(&self) -> Option<u32> {
        self.ranges.keys().next().copied()
    }

    /// The lowest free address at or above `from`.
    pub fn next_free(&self, from: u32) -> Option<u32> {
        if self.contains(from) {
            return Some(from);
        }
        self.ranges.range(from..).next().map(|(s, _)| *s)
    }

    /// The highest free address at or below `from`.
    pub fn prev_free(&self, from: u32) -> Option<u32> {
        self.ranges
            .range(..=from)
            .next_back()
            .map(|(_, e)| (*e).min(from))
    }

    /// At most `max` ranges in ascending order, the first holding or following `from` (and
    /// clipped to start at `from`).
    pub fn ranges_from(&self, from: u32, max: usize) -> Vec<(u32, u32)> {
        let head = self.holding(from).map(|(_, e)| (from, e));
        let start = head.map_or(from, |(_, e)| e.saturating_add(1));
        let rest = self
            .ranges
            .range(start..)
            .map(|(s, e)| (*s, *e))
            .filter(|(s, _)| head.is_none_or(|(_, he)| *s > he));
        head.into_iter().chain(rest).take(max).collect()
    }

    /// Every free range, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// Take `a` out of the free set; false if it was not free.
    pub fn remove(&mut self, a: u32) -> bool {
        let Some((s, e)) = self.holding(a) else {
            return false;
        };
        self.ranges.remove(&s);
        if s < a {
            self.ranges.insert(s, a - 1);
        }
        if a < e {
            self.ranges.insert(a + 1, e);
        }
        self.count -= 1;
        self.digest ^= mix(a);
        true
    }

    /// Put `a` back; false if it was free already. The caller knows `a` belongs to the pool.
    pub fn insert(&mut self, a: u32) -> bool {
        if self.contains(a) {
            return false;
        }
        let left = a
            .checked_sub(1)
            .and_then(|p| self.holding(p))
            .map(|(s, _)| s);
        let right = a.checked_add(1).and_then(|n| self.ranges.get(&n).copied());
        let start = left.unwrap_or(a);
        let end = match right {
            Some(e) => {
                self.ranges.remove(&(a + 1));
                e
            }
            None => a,
        };
        self.ranges.insert(start, end);
        self.count += 1;
        self.digest ^= mix(a);
        true
    }
}

/// What an address decision may ask of a pool: a shared, read-only snapshot of its free
/// ranges, with the pool's generation (its number of changes since the host built it).
#[derive(Debug, Clone, Default)]
pub struct PoolView {
    free: Arc<FreeRanges>,
    generation: u64,
}

impl PartialEq for PoolView {
    fn eq(&self, other: &Self) -> bool {
        self.generation == other.generation
            && (Arc::ptr_eq(&self.free, &other.free) || self.free == other.free)
    }
}
impl Eq for PoolView {}

impl PoolView {
    pub fn new(free: Arc<FreeRanges>, generation: u64) -> Self {
        Self { free, generation }
    }

    /// A view of `first..=last` minus `held` (tests, `weir plugin eval`).
    pub fn from_held(first: Ipv4Addr, last: Ipv4Addr, held: &[Ipv4Addr]) -> Self {
        let (first, last) = (u32::from(first), u32::from(last));
        let mut free = FreeRanges::new(first, last);
        for a in held {
            free.remove(u32::from(*a));
        }
        Self::new(Arc::new(free), 0)
    }

    pub fn free(&self) -> &FreeRanges {
        &self.free
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn is_free(&self, a: Ipv4Addr) -> bool {
        self.free.contains(u32::from(a))
    }

    /// `g<generation>-<digest>`: what the decision log records of the pool.
    pub fn tag(&self) -> String {
        format!("g{}-{:016x}", self.generation, self.free.digest())
    }
}

/// The JSON form of a pool: `free` ranges (what the host hands out) or, for requests written
/// by hand, the `held` addresses of the request's range. Serialising writes the summary only
/// ([`PoolJson::summary`], O(1): what the decision log keeps).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<Vec<(Ipv4Addr, Ipv4Addr)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<Ipv4Addr>>,
    #[serde(default)]
    pub free_count: u64,
    #[serde(default)]
    pub generation: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

impl PoolJson {
    /// The summary a log line carries: counts, generation and digest, O(1).
    pub fn summary(v: &PoolView) -> Self {
        Self {
            free: None,
            held: None,
            free_count: v.free.count(),
            generation: v.generation,
            tag: v.tag(),
        }
    }

    /// The view this JSON describes, within `first..=last` (held addresses are taken out of
    /// that range; free ranges are clipped to it).
    pub fn view(&self, first: Ipv4Addr, last: Ipv4Addr) -> PoolView {
        let (lo, hi) = (u32::from(first), u32::from(last));
        match (&self.free, &self.held) {
            (Some(free), _) => {
                // Start from the whole range and take out what no free range covers, so the
                // digest is that of the pool the ranges describe (O(range), for requests
                // written by hand).
                let mut covered: Vec<(u32, u32)> = free
                    .iter()
                    .map(|(s, e)| (u32::from(*s).max(lo), u32::from(*e).min(hi)))
                    .filter(|(s, e)| s <= e)
                    .collect();
                covered.sort();
                let mut f = FreeRanges::new(lo, hi);
                let mut next = u64::from(lo);
                for (s, e) in covered {
                    for a in next..u64::from(s) {
                        f.remove(a as u32);
                    }
                    next = next.max(u64::from(e) + 1);
                }
                for a in next..=u64::from(hi) {
                    f.remove(a as u32);
                }
                PoolView::new(Arc::new(f), self.generation)
            }
            (None, held) => PoolView::from_held(first, last, held.as_deref().unwrap_or(&[])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(f: &FreeRanges) -> Vec<(u32, u32)> {
        f.iter().collect()
    }

    #[test]
    fn remove_splits_and_insert_merges() {
        let mut f = FreeRanges::new(10, 20);
        assert_eq!(f.count(), 11);
        assert!(f.remove(15));
        assert!(!f.remove(15));
        assert!(f.remove(10));
        assert!(f.remove(20));
        assert_eq!(ranges(&f), [(11, 14), (16, 19)]);
        assert_eq!(f.count(), 8);
        assert!(!f.remove(9) && !f.remove(21));
        assert!(f.insert(15));
        assert!(!f.insert(15));
        assert_eq!(ranges(&f), [(11, 19)]);
        assert!(f.insert(10) && f.insert(20));
        assert_eq!(ranges(&f), [(10, 20)]);
        assert_eq!(f.count(), 11);
        assert_eq!(f.digest(), 0, "all free again: nothing held");
    }

    #[test]
    fn queries() {
        let mut f = FreeRanges::new(10, 20);
        for a in [10, 11, 14, 15, 16, 20] {
            f.remove(a);
        }
        assert_eq!(ranges(&f), [(12, 13), (17, 19)]);
        assert_eq!(f.first(), Some(12));
        assert_eq!(f.next_free(0), Some(12));
        assert_eq!(f.next_free(13), Some(13));
        assert_eq!(f.next_free(14), Some(17));
        assert_eq!(f.next_free(20), None);
        assert_eq!(f.prev_free(16), Some(13));
        assert_eq!(f.prev_free(18), Some(18));
        assert_eq!(f.prev_free(11), None);
        assert_eq!(f.prev_free(u32::MAX), Some(19));
        assert_eq!(f.ranges_from(13, 10), [(13, 13), (17, 19)]);
        assert_eq!(f.ranges_from(0, 1), [(12, 13)]);
        assert_eq!(f.ranges_from(18, 5), [(18, 19)]);
        assert!(f.ranges_from(20, 5).is_empty());
    }

    #[test]
    fn the_digest_depends_on_the_contents_not_the_history() {
        let mut a = FreeRanges::new(0, 100);
        let mut b = FreeRanges::new(0, 100);
        for x in [5, 7, 9, 50] {
            a.remove(x);
        }
        for x in [50, 3, 9, 7, 5] {
            b.remove(x);
        }
        b.insert(3);
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
        b.remove(6);
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn edges_of_the_address_space() {
        let mut f = FreeRanges::new(u32::MAX - 1, u32::MAX);
        assert!(f.remove(u32::MAX));
        assert!(f.insert(u32::MAX));
        assert_eq!(ranges(&f), [(u32::MAX - 1, u32::MAX)]);
        let mut g = FreeRanges::new(0, 1);
        assert!(g.remove(0) && g.insert(0));
        assert_eq!(ranges(&g), [(0, 1)]);
        assert_eq!(FreeRanges::new(5, 4).count(), 0);
    }

    #[test]
    fn json_forms_give_the_same_view() {
        let first = Ipv4Addr::new(10, 0, 0, 2);
        let last = Ipv4Addr::new(10, 0, 0, 9);
        let held = PoolJson {
            held: Some(vec![Ipv4Addr::new(10, 0, 0, 3)]),
            ..Default::default()
        }
        .view(first, last);
        let ranges = PoolJson {
            free: Some(vec![(first, first), (Ipv4Addr::new(10, 0, 0, 4), last)]),
            ..Default::default()
        }
        .view(first, last);
        assert_eq!(ranges, held);
        assert_eq!(ranges.free().digest(), held.free().digest());
        assert_eq!(PoolJson::summary(&held).free_count, 7);
    }
}
