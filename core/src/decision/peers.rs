//! The runners a route decision may name: indexed once per topology change and shared by
//! every decision of that change, so one decision costs O(log n) per query, not O(n).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::RunnerInfo;

/// Every runner of a network, by name and by label.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerIndex {
    by_name: BTreeMap<String, RunnerInfo>,
    by_label: BTreeMap<(String, String), BTreeSet<String>>,
}

impl PeerIndex {
    pub fn new(runners: impl IntoIterator<Item = RunnerInfo>) -> Self {
        let mut index = Self::default();
        for r in runners {
            for (k, v) in &r.labels {
                index
                    .by_label
                    .entry((k.clone(), v.clone()))
                    .or_default()
                    .insert(r.name.clone());
            }
            index.by_name.insert(r.name.clone(), r);
        }
        index
    }

    pub fn get(&self, name: &str) -> Option<&RunnerInfo> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The peers of one runner: the shared index minus the runner itself.
#[derive(Debug, Clone, Default)]
pub struct PeersView {
    index: Arc<PeerIndex>,
    me: String,
}

impl PartialEq for PeersView {
    fn eq(&self, other: &Self) -> bool {
        self.me == other.me && (Arc::ptr_eq(&self.index, &other.index) || self.index == other.index)
    }
}
impl Eq for PeersView {}

impl PeersView {
    pub fn new(index: Arc<PeerIndex>, me: &str) -> Self {
        Self {
            index,
            me: me.to_string(),
        }
    }

    pub fn count(&self) -> usize {
        self.index.len() - usize::from(self.index.by_name.contains_key(&self.me))
    }

    pub fn get(&self, name: &str) -> Option<&RunnerInfo> {
        (name != self.me).then(|| self.index.get(name)).flatten()
    }

    /// The peers whose label `key` is `value`, in name order.
    pub fn with_label<'a>(
        &'a self,
        key: &str,
        value: &str,
    ) -> impl Iterator<Item = &'a RunnerInfo> + 'a {
        self.names_with_label(key, value)
            .filter_map(|n| self.index.get(n))
    }

    /// The names of the peers whose label `key` is `value`, in name order.
    pub fn names_with_label<'a>(
        &'a self,
        key: &str,
        value: &str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.index
            .by_label
            .get(&(key.to_string(), value.to_string()))
            .into_iter()
            .flatten()
            .map(String::as_str)
            .filter(|n| *n != self.me)
    }

    /// At most `max` peers in name order after `after` ("" from the start).
    pub fn page<'a>(
        &'a self,
        after: &str,
        max: usize,
    ) -> impl Iterator<Item = &'a RunnerInfo> + 'a {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = if after.is_empty() {
            Unbounded
        } else {
            Excluded(after.to_string())
        };
        self.index
            .by_name
            .range((from, Unbounded))
            .filter(|(n, _)| **n != self.me)
            .map(|(_, r)| r)
            .take(max)
    }

    /// Every peer (tests, the JSON form).
    pub fn all(&self) -> impl Iterator<Item = &RunnerInfo> {
        self.page("", usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn runner(name: &str, id: u32, rack: &str) -> RunnerInfo {
        RunnerInfo {
            name: name.into(),
            id,
            labels: [("rack".to_string(), rack.to_string())].into(),
            physical_ip: Ipv4Addr::new(192, 0, 2, id as u8),
        }
    }

    #[test]
    fn a_runner_never_sees_itself() {
        let index = Arc::new(PeerIndex::new([
            runner("a", 1, "x"),
            runner("b", 2, "x"),
            runner("c", 3, "y"),
        ]));
        let v = PeersView::new(index, "a");
        assert_eq!(v.count(), 2);
        assert!(v.get("a").is_none());
        assert_eq!(v.get("c").map(|r| r.id), Some(3));
        let names = |it: &mut dyn Iterator<Item = &RunnerInfo>| {
            it.map(|r| r.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&mut v.with_label("rack", "x")), ["b"]);
        assert_eq!(names(&mut v.with_label("rack", "z")), Vec::<String>::new());
        assert_eq!(v.names_with_label("rack", "x").collect::<Vec<_>>(), ["b"]);
        assert_eq!(names(&mut v.page("", 10)), ["b", "c"]);
        assert_eq!(names(&mut v.page("b", 10)), ["c"]);
        assert_eq!(names(&mut v.page("", 1)), ["b"]);
    }
}
