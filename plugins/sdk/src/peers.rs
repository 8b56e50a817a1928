//! Helpers for router plugins: the peer runners behind a trait, so a decision is written once
//! and runs against the host's [`Peers`](crate::Peers) in the component and against
//! [`MemoryPeers`] in unit tests.

use crate::types::RunnerInfo;

/// What a route decision may ask about the other runners. Each call on the host's set is one
/// host call of O(log n) (plus what it returns).
pub trait PeerSet {
    fn count(&self) -> u32;
    fn get(&self, name: &str) -> Option<RunnerInfo>;
    /// The peers whose label `key` is `value`.
    fn with_label(&self, key: &str, value: &str) -> Vec<RunnerInfo>;
    /// Their names alone (no labels copied across: the cheaper call when names are the answer).
    fn names_with_label(&self, key: &str, value: &str) -> Vec<String>;
    /// At most `max` peers in name order after `after` ("" from the start).
    fn page(&self, after: &str, max: u32) -> Vec<RunnerInfo>;
}

impl PeerSet for crate::Peers {
    fn count(&self) -> u32 {
        crate::Peers::count(self)
    }
    fn get(&self, name: &str) -> Option<RunnerInfo> {
        crate::Peers::get(self, name)
    }
    fn with_label(&self, key: &str, value: &str) -> Vec<RunnerInfo> {
        crate::Peers::with_label(self, key, value)
    }
    fn names_with_label(&self, key: &str, value: &str) -> Vec<String> {
        crate::Peers::names_with_label(self, key, value)
    }
    fn page(&self, after: &str, max: u32) -> Vec<RunnerInfo> {
        crate::Peers::page(self, after, max)
    }
}

/// Peers in plugin memory, for unit tests (kept in name order).
#[derive(Debug, Clone, Default)]
pub struct MemoryPeers(pub Vec<RunnerInfo>);

impl MemoryPeers {
    pub fn new(mut peers: Vec<RunnerInfo>) -> Self {
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        Self(peers)
    }
}

impl PeerSet for MemoryPeers {
    fn count(&self) -> u32 {
        self.0.len() as u32
    }
    fn get(&self, name: &str) -> Option<RunnerInfo> {
        self.0.iter().find(|p| p.name == name).cloned()
    }
    fn with_label(&self, key: &str, value: &str) -> Vec<RunnerInfo> {
        self.0
            .iter()
            .filter(|p| crate::label(&p.labels, key) == Some(value))
            .cloned()
            .collect()
    }
    fn names_with_label(&self, key: &str, value: &str) -> Vec<String> {
        self.with_label(key, value)
            .into_iter()
            .map(|p| p.name)
            .collect()
    }
    fn page(&self, after: &str, max: u32) -> Vec<RunnerInfo> {
        self.0
            .iter()
            .filter(|p| after.is_empty() || p.name.as_str() > after)
            .take(max as usize)
            .cloned()
            .collect()
    }
}
